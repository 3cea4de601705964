"""sample: the target VLM answers each item's prompt while looking at each distorted image.

POVID's second source of dispreferred answers: with the image degraded, what the model says is driven
by its language prior, so its answers carry its own (on-policy) hallucinations. With `clean` it also
answers on the clean image itself (variant `clean`, OPA-DPO / RLAIF-V: `povid correct` then corrects
those answers minimally, and `filter --kinds corrected` pairs the correction against the original).

Reads  `items` (id, prompt, image and extra_images: the clean images, for --logprobs, `clean` and the images a
       variant leaves clean) and `distorted` (id, item_id, variant, image, extra_images, image_indices;
       optional with `clean`: without distorted images only the clean one is answered). Every distorted
       variant of an item is one prompt, the clean image one more; a multi-image item's prompt shows all of
       its images, in order, the distorted ones in their places (schemas.variant_images). vLLM takes at most
       --max-images images per prompt (a failed row of kind `multi_image` above that).
Writes `sampled` (schemas.SAMPLED): id = f"{item_id}-{variant}" (f"{item_id}-clean" for the clean
       image), item_id, variant, responses (n strings),
       finish_reasons ("stop" | "length"), logprobs (mean token log-prob of each response under the
       CLEAN image, with `logprobs=True`, else null), model, backend, temperature, top_p, max_tokens, n.

The model is loaded once per process in `setup()`. With vLLM the stage takes whole shards
(batch_size None) and lets the engine schedule; with transformers it takes `batch_size` items at a time.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from povid_cli.backends.api_config import APIConfig
from povid_cli.core.errors import PovidError, RowError, UsageError
from povid_cli.core.options import Options, group, opt
from povid_cli.core.schemas import SAMPLED, item_images, variant_images
from povid_cli.core.stage import Batch, Result, Stage, failure
from povid_cli.core.store import digest
from stages.distort_recipe import materialise

_ENGINE = "Engine (vllm, transformers)"
CLEAN = "clean"  # the variant of answers on the clean image (sample --clean)


def backends() -> tuple[str, ...]:
    from povid_cli.backends import registry

    return ("auto",) + registry.names("vlm")


@dataclass(frozen=True)
class SampleConfig(Options):
    model: str = opt("", "The target VLM: a model folder or hub name (with --backend openai: the server's model "
                     "name).", short="-m")
    backend: str = opt("auto", "vllm (in-process vllm.LLM), transformers (generate; the CPU fallback) or openai (an "
                       "OpenAI-compatible server such as `vllm serve`). auto: vllm when it is installed and a GPU is "
                       "there, else transformers.", short="-b", choices=backends)
    n: int = opt(1, "Answers per (item, distorted variant).", min=1)
    temperature: float = opt(1.0, "Sampling temperature; 0 is greedy.", short="-t", min=0.0)
    top_p: float = opt(1.0, "Nucleus sampling.", min=0.01, max=1.0)
    max_tokens: int = opt(256, "Most tokens per answer.", min=1)
    seed: int | None = opt(0, "Sampling seed (same data + seed + backend = same answers).")
    dtype: str = opt("auto", "Weights dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16.",
                     choices=("auto", "float32", "bfloat16", "float16"), panel=_ENGINE)
    # hash=False: config_hash adds it only when set, so datasets sampled before this option keep their hash
    clean: bool = opt(False, "Also answer on the clean image (variant `clean`; only that one when there are no "
                      "distorted images): the model's own answers for `povid correct` (OPA-DPO / RLAIF-V pairs).",
                      hash=False)
    logprobs: bool = opt(False, "Also store each answer's mean token log-prob under the CLEAN image (how on-policy a "
                         "pair is; used by filter).")
    batch_size: int | None = opt(None, "transformers: items per generate call [8]; vllm: most sequences running at "
                                 "once [vLLM's default].", hash=False, min=1, panel=_ENGINE)
    tensor_parallel: int = opt(1, "vllm: GPUs to shard the model over.", hash=False, min=1, flag="--tensor-parallel",
                               short="--tp", panel=_ENGINE)
    max_model_len: int | None = opt(None, "vllm: context length to reserve KV cache for [the model's].", hash=False,
                                    min=16, panel=_ENGINE)
    max_images: int = opt(1, "vllm: most images in one prompt (multi-image items); the engine reserves memory for "
                          "this many.", hash=False, min=1, panel=_ENGINE)
    api: APIConfig = group(APIConfig, factory=lambda: APIConfig(timeout=120.0))


class SampleStage(Stage):
    name = "sample"
    reads = ("items", "distorted")
    writes = ("sampled",)
    schemas = {"sampled": SAMPLED}
    Config = SampleConfig
    max_workers = 1  # one process holds the model

    def __init__(self, config: SampleConfig):
        if not config.model:
            raise UsageError("sample needs --model (a model folder or a hub name)")
        from povid_cli.backends import registry
        from povid_cli.backends.vlm import default_backend

        if config.backend == "auto":  # recorded (and hashed) as the backend actually used
            config = dataclasses.replace(config, backend=default_backend())
        super().__init__(config)
        self.backend_cls = registry.load("vlm", config.backend)
        if self.backend_cls.local:
            from povid_cli.backends.families import detect_family

            detect_family(config.model)  # an unsupported model fails here, before anything loads
        if config.logprobs and not self.backend_cls.can_score:
            raise UsageError(f"--logprobs needs a backend that can score answers; {config.backend} cannot")
        # Engines and API servers schedule themselves: hand them whole shards. Otherwise fixed batches.
        self.batch_size = None if self.backend_cls.whole_shards else (config.batch_size or 8)
        self.uses_api = not self.backend_cls.local
        self.resources = {}
        if self.backend_cls.local:
            from povid_cli.backends.vlm import gpu_count

            if gpu_count() > 0:
                self.resources = {"num_gpus": float(config.tensor_parallel if self.backend_cls.whole_shards else 1)}
        self.backend = None
        if config.clean:  # the clean image is in items: distorted images are answered when there are some
            self.reads, self.optional_reads = ("items",), ("distorted",)

    @classmethod
    def check(cls, data) -> None:
        if not data.has("distorted") and not getattr(data.config, "clean", False):
            raise PovidError(f"{data.url} has no distorted images yet: run `povid distort` first "
                             "(or answer on the clean images with --clean)")

    def config_hash(self) -> str:
        h = super().config_hash()
        return digest(h, "clean") if self.config.clean else h

    def sampling(self):
        from povid_cli.backends.vlm import Sampling

        c = self.config
        return Sampling(n=c.n, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_tokens, seed=c.seed)

    def setup(self) -> None:
        from povid_cli.backends.vlm import load_backend

        c = self.config
        self.backend = load_backend(c.backend, model=c.model, sampling=self.sampling(), dtype=c.dtype,
                                    batch_size=c.batch_size, tensor_parallel=c.tensor_parallel,
                                    max_model_len=c.max_model_len, max_images=c.max_images, api=c.api)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        self._ready = False  # used again in this process (synth, notebooks): set up again

    def process(self, batch: Batch) -> Result:
        from povid_cli.backends.vlm import VLMRequest

        c = self.config
        variants = batch.by_item("distorted")
        jobs: list[tuple[dict, dict, list[bytes]]] = []  # (item, distorted row, the prompt's images)
        failed: list[dict] = []
        for item in batch.rows:
            targets = list(variants.get(item["id"], []))
            if c.clean:  # the clean images as one more "variant", with the id and columns of a distorted row
                targets.append({"id": f"{item['id']}-{CLEAN}", "variant": CLEAN, "image": item.get("image"),
                                "extra_images": item.get("extra_images")})
            for d in targets:
                try:
                    images = [im.get("bytes") if im else None for im in variant_images(item, materialise(item, d))]
                except ValueError as e:
                    failed.append(failure(d["id"], str(e), kind="bad_image"))
                    continue
                except RowError as e:  # a distorted image stored as a recipe that cannot be rebuilt
                    failed.append(failure(d["id"], str(e), kind=e.kind))
                    continue
                if not all(images):
                    failed.append(failure(d["id"], "the distorted row (or its item) has no image bytes", kind="bad_image"))
                    continue
                jobs.append((item, d, images))
        if not jobs:
            return Result({"sampled": []}, failed)
        t0 = time.perf_counter()
        outs = self.backend.generate([VLMRequest(item["prompt"], ims[0], ims[1:]) for item, _, ims in jobs])
        scores: dict[int, list[float] | RowError] = {}
        if c.logprobs:
            ok = [i for i, o in enumerate(outs) if not isinstance(o, RowError)]
            clean = [[im["bytes"] for im in item_images(jobs[i][0])] for i in ok]
            got = self.backend.score([VLMRequest(jobs[i][0]["prompt"], ims[0], ims[1:]) for i, ims in zip(ok, clean)],
                                     [outs[i] for i in ok]) if ok else []
            scores = dict(zip(ok, got))
        rows, tokens = [], 0
        for i, ((item, d, _), o) in enumerate(zip(jobs, outs)):
            err = o if isinstance(o, RowError) else scores.get(i) if isinstance(scores.get(i), RowError) else None
            if err is not None:
                failed.append(failure(d["id"], str(err), kind=err.kind, retryable=err.retryable))
                continue
            tokens += o.generated_tokens
            rows.append({
                "id": d["id"], "item_id": item["id"], "variant": d["variant"],
                "responses": o.texts, "finish_reasons": o.finish_reasons,
                "logprobs": scores.get(i) if c.logprobs else None,
                "model": c.model, "backend": c.backend, "temperature": c.temperature, "top_p": c.top_p,
                "max_tokens": c.max_tokens, "n": c.n,
            })
        usage = {"prompts": len(jobs), "responses": sum(len(r["responses"]) for r in rows),
                 "generate_seconds": round(time.perf_counter() - t0, 3)}
        api = {k: v for k, v in getattr(self.backend, "usage", {}).items() if isinstance(v, (int, float))}
        if api:  # openai: requests, prompt/completion tokens, cost, cached (the hallucinate stage's keys)
            usage.update(api)
        else:
            usage["generated_tokens"] = tokens
        return Result({"sampled": rows}, failed, usage)
