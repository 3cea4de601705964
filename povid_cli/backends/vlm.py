"""VLM sampling backends for `sample`: one interface, picked by name, imported lazily.

    backend = load_backend("transformers", model="path/to/vlm", sampling=Sampling(n=2, temperature=1.0))
    outs = backend.generate([VLMRequest(prompt="Describe this image.", image=png_bytes)])
    outs = backend.generate([VLMRequest("What changed?", image=a_png, extra_images=[b_png])])  # several images
    outs[0].texts, outs[0].finish_reasons          # n strings, "stop" | "length" each
    backend.score([VLMRequest(prompt, clean_png)], [outs[0]])   # -> [[mean token log-prob per text]]

`generate` returns, for each request, a `VLMOutput` or a `RowError` (that row failed, the others go on).
"""

from __future__ import annotations


import importlib.util
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

from povid_cli.core.errors import RowError



@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class VLMRequest:
    prompt: str   # the user's text, without image tags: the chat template places the image(s)
    image: bytes  # encoded image (PNG/JPEG)
    extra_images: list[bytes] = field(default_factory=list)  # multi-image prompts: the other images, in order

    @property
    def images(self) -> list[bytes]:
        return [self.image, *self.extra_images]


@dataclass
class VLMOutput:
    texts: list[str]
    finish_reasons: list[str]  # "stop" (end of turn) | "length" (max_tokens reached)
    token_ids: list[list[int]] = field(default_factory=list)  # generated ids, when the backend has them
    usage: dict[str, float] = field(default_factory=dict)

    @property
    def generated_tokens(self) -> int:
        if self.token_ids:
            return sum(len(t) for t in self.token_ids)
        return int(self.usage.get("completion_tokens", 0))


def load_backend(name: str, **kwargs: Any):
    """Instantiate VLM backend `name` from the registry (vllm | transformers | openai | a plug-in's); its
    heavy imports happen here."""
    from povid_cli.backends import registry

    return registry.load("vlm", name)(**kwargs)


def gpu_count() -> int:
    """CUDA devices visible to torch (0 when torch is not installed or has no CUDA)."""
    if importlib.util.find_spec("torch") is None:
        return 0
    import torch

    try:
        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - a broken driver means: no usable GPU
        return 0


def default_backend() -> str:
    """vllm when it is installed and a GPU is there; else transformers (the CPU fallback)."""
    if importlib.util.find_spec("vllm") is not None and gpu_count() > 0:
        return "vllm"
    return "transformers"


def decode_images(datas: Iterable[bytes], pool: ThreadPoolExecutor | None = None) -> list:
    """Decode image bytes to RGB PIL images (in a thread pool: PIL releases the GIL while decoding).

    A bad image becomes a RowError in its slot instead of failing the batch.
    """
    from povid_cli.core.images import decode_rgb

    def one(data: bytes):
        try:
            if not data:
                raise RowError("the distorted image is empty", kind="bad_image")
            return decode_rgb(data)
        except RowError as e:
            return e
        except Exception as e:  # noqa: BLE001
            return RowError(f"cannot decode image: {type(e).__name__}: {e}", kind="bad_image")

    datas = list(datas)
    if pool is None:
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(datas)))) as p:
            return list(p.map(one, datas))
    return list(pool.map(one, datas))


def decode_request_images(requests: list, pool: ThreadPoolExecutor | None = None) -> list:
    """Every request's images decoded (`decode_images`), as one list of PIL images per request, or the
    RowError of its first bad image."""
    flat = decode_images([d for r in requests for d in r.images], pool)
    out, i = [], 0
    for r in requests:
        ims = flat[i : i + len(r.images)]
        i += len(r.images)
        out.append(next((im for im in ims if isinstance(im, RowError)), ims))
    return out


def finish_reason(ids: list[int], eos_ids: set[int], max_tokens: int) -> str:
    if ids and ids[-1] in eos_ids:
        return "stop"
    return "length" if len(ids) >= max_tokens else "stop"
