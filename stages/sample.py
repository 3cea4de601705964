"""sample: the target VLM answers each item's prompt while looking at each distorted image.

POVID's second source of dispreferred answers: with the image degraded, what the model says is driven
by its language prior, so its answers carry its own (on-policy) hallucinations.

Reads  `items` (id, prompt, image: the clean image, for --logprobs) and `distorted` (id, item_id,
       variant, image). Every distorted variant of an item is one prompt.
Writes `sampled` (schemas.SAMPLED): id = f"{item_id}-{variant}", item_id, variant, responses (n strings),
       finish_reasons ("stop" | "length"), logprobs (mean token log-prob of each response under the
       CLEAN image, with `logprobs=True`, else null), model, backend, temperature, top_p, max_tokens, n.

The model is loaded once per process in `setup()`. With vLLM the stage takes whole shards
(batch_size None) and lets the engine schedule; with transformers it takes `batch_size` items at a time.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from povid_cli.core.errors import RowError, UsageError
from povid_cli.core.schemas import SAMPLED
from povid_cli.core.stage import Batch, Result, Stage, failure

NOHASH = {"hash": False}  # settings that change speed or transport, never the answers


@dataclass(frozen=True)
class SampleConfig:
    model: str = ""
    backend: str = "auto"                  # vllm | transformers | openai; auto: vllm on GPU if installed, else transformers
    n: int = 1                             # answers per (item, variant)
    temperature: float = 1.0               # 0: greedy
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = 0
    dtype: str = "auto"
    logprobs: bool = False                 # score each answer under the clean image (for `filter`)
    batch_size: int | None = field(default=None, metadata=NOHASH)      # transformers: items per generate; vllm: max_num_seqs
    tensor_parallel: int = field(default=1, metadata=NOHASH)
    max_model_len: int | None = field(default=None, metadata=NOHASH)
    api_base: str | None = field(default=None, metadata=NOHASH)
    api_key_env: str = field(default="OPENAI_API_KEY", metadata=NOHASH)
    concurrency: int = field(default=16, metadata=NOHASH)
    rpm: float | None = field(default=None, metadata=NOHASH)
    timeout: float = field(default=120.0, metadata=NOHASH)
    max_retries: int = field(default=5, metadata=NOHASH)
    cache_dir: str | None = field(default=None, metadata=NOHASH)


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
        from povid_cli.backends.vlm import BACKENDS, default_backend

        if config.backend == "auto":  # recorded (and hashed) as the backend actually used
            config = dataclasses.replace(config, backend=default_backend())
        if config.backend not in BACKENDS:
            raise UsageError(f"unknown backend '{config.backend}'; choose one of: auto, {', '.join(BACKENDS)}")
        super().__init__(config)
        if config.backend != "openai":
            from povid_cli.backends.families import detect_family

            detect_family(config.model)  # an unsupported model fails here, before anything loads
        if config.logprobs and config.backend == "openai":
            raise UsageError("--logprobs needs the vllm or transformers backend")
        if config.n < 1 or config.max_tokens < 1:
            raise UsageError("--n and --max-tokens must be at least 1")
        if not 0 < config.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {config.top_p}")
        # vLLM and API servers schedule themselves: hand them whole shards. transformers: fixed batches.
        self.batch_size = (config.batch_size or 8) if config.backend == "transformers" else None
        self.resources = {}
        if config.backend in ("vllm", "transformers"):
            from povid_cli.backends.vlm import gpu_count

            if gpu_count() > 0:
                self.resources = {"num_gpus": float(config.tensor_parallel if config.backend == "vllm" else 1)}
        self.backend = None

    def sampling(self):
        from povid_cli.backends.vlm import Sampling

        c = self.config
        return Sampling(n=c.n, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_tokens, seed=c.seed)

    def setup(self) -> None:
        from povid_cli.backends.vlm import load_backend

        c = self.config
        kw: dict = dict(model=c.model, sampling=self.sampling(), dtype=c.dtype, batch_size=c.batch_size,
                        tensor_parallel=c.tensor_parallel, max_model_len=c.max_model_len)
        if c.backend == "openai":
            from povid_cli.backends.openai_client import APIConfig

            kw["api"] = APIConfig(api_base=c.api_base, api_key_env=c.api_key_env, concurrency=c.concurrency,
                                  rpm=c.rpm, timeout=c.timeout, max_retries=c.max_retries, cache_dir=c.cache_dir)
        self.backend = load_backend(c.backend, **kw)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        self._ready = False  # used again in this process (synth, notebooks): set up again

    def process(self, batch: Batch) -> Result:
        from povid_cli.backends.vlm import VLMRequest

        c = self.config
        variants = batch.by_item("distorted")
        jobs: list[tuple[dict, dict]] = []  # (item, distorted row)
        failed: list[dict] = []
        for item in batch.rows:
            for d in variants.get(item["id"], []):
                if not (d.get("image") or {}).get("bytes"):
                    failed.append(failure(d["id"], "the distorted row has no image bytes", kind="bad_image"))
                    continue
                jobs.append((item, d))
        if not jobs:
            return Result({"sampled": []}, failed)
        t0 = time.perf_counter()
        outs = self.backend.generate([VLMRequest(item["prompt"], d["image"]["bytes"]) for item, d in jobs])
        scores: dict[int, list[float] | RowError] = {}
        if c.logprobs:
            ok = [i for i, o in enumerate(outs) if not isinstance(o, RowError)]
            got = self.backend.score([VLMRequest(jobs[i][0]["prompt"], jobs[i][0]["image"]["bytes"]) for i in ok],
                                     [outs[i] for i in ok]) if ok else []
            scores = dict(zip(ok, got))
        rows, tokens = [], 0
        for i, ((item, d), o) in enumerate(zip(jobs, outs)):
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
