"""`povid sample DATA --model M`"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from povid_cli.app import Limit, RetryFailed, Verbose, command, execute_stage

Backend = Annotated[str, typer.Option("--backend", "-b", help="vllm (in-process vllm.LLM), transformers (generate; the CPU fallback) or openai (an OpenAI-compatible server such as `vllm serve`). auto: vllm when it is installed and a GPU is there, else transformers.")]


def _default_cache_dir(data: str) -> str:
    """DATA/cache/sample for a local dataset; a per-user folder for one on s3:// or gs://."""
    import os

    from povid_cli.core.fs import is_url

    if is_url(data):
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "povid", "sample")
    return os.path.join(data, "cache", "sample")


HELP = """Let the target VLM answer each prompt while looking at each distorted image -> DATA/sampled.

With the image degraded (`povid distort`), what the model says comes from its language prior:
its own, on-policy hallucinations, which `povid filter` turns into dispreferred answers. One row
per (item, distorted variant) with --n answers, their finish reasons ("stop" | "length") and the
sampling settings. The model family must be one of: LLaVA, Qwen2-VL, Qwen2.5-VL, Idefics3; its own
chat template builds the prompt. Finished shards are kept: run it again to resume.

Examples:

  povid sample data --model llava-hf/llava-1.5-7b-hf --n 2

  povid sample data --model Qwen/Qwen2-VL-7B-Instruct --backend vllm --tp 2 --logprobs

  vllm serve Qwen/Qwen2-VL-2B-Instruct &
  povid sample data --backend openai --api-base http://127.0.0.1:8000/v1 --model Qwen/Qwen2-VL-2B-Instruct

  povid sample data --model ./tiny-vlm --backend transformers --limit 4 -t 0
"""


def _help() -> str:
    """HELP with its paragraphs reflowed (typer's rich mode keeps line breaks), examples kept as they are."""
    paras = HELP.strip().split("\n\n")
    return "\n\n".join(p if p.startswith("  ") else " ".join(p.split("\n")) for p in paras)


@command("sample", help=_help())
def sample_cmd(
    data: Annotated[str, typer.Argument(help="The dataset folder (local path or URL) with items and distorted.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="The target VLM: a model folder or hub name (with --backend openai: the server's model name).", show_default=False)],
    backend: Backend = "auto",
    n: Annotated[int, typer.Option("--n", min=1, help="Answers per (item, distorted variant).")] = 1,
    temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0, help="Sampling temperature; 0 is greedy.")] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling.")] = 1.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens per answer.")] = 256,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="transformers: items per generate call [8]; vllm: most sequences running at once [vLLM's default].")] = None,
    api_base: Annotated[Optional[str], typer.Option("--api-base", help="OpenAI-compatible endpoint for --backend openai, e.g. http://127.0.0.1:8000/v1 (`vllm serve MODEL`).")] = None,
    api_key_env: Annotated[str, typer.Option("--api-key-env", help="Environment variable holding the API key (a local server needs none).")] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="openai: requests in flight at once.")] = 16,
    dtype: Annotated[str, typer.Option("--dtype", help="Weights dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16.")] = "auto",
    tensor_parallel: Annotated[int, typer.Option("--tensor-parallel", "--tp", min=1, help="vllm: GPUs to shard the model over.")] = 1,
    max_model_len: Annotated[Optional[int], typer.Option("--max-model-len", min=16, help="vllm: context length to reserve KV cache for [the model's].")] = None,
    cache_dir: Annotated[Optional[str], typer.Option("--cache-dir", help="openai: response cache folder \\[default: DATA/cache/sample].", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (same data + seed + backend = same answers).")] = 0,
    logprobs: Annotated[bool, typer.Option("--logprobs", help="Also store each answer's mean token log-prob under the CLEAN image (how on-policy a pair is; used by filter).")] = False,
    limit: Limit = None,
    retry_failed: RetryFailed = False,
    verbose: Verbose = 0,
):
    from povid_cli.core.errors import PovidError
    from povid_cli.core.store import Dataset
    from stages.sample import SampleConfig, SampleStage

    ds = Dataset.open(data)
    if not ds.has("distorted"):
        raise PovidError(f"{ds.root.url} has no distorted images yet: run `povid distort {data}` first")
    if backend == "openai" and not cache_dir:
        # every response is cached (DATA/cache/sample): a re-run after a crash never pays twice
        cache_dir = _default_cache_dir(data)
    cfg = SampleConfig(model=model, backend=backend.lower(), n=n, temperature=temperature, top_p=top_p,
                       max_tokens=max_tokens, seed=seed, dtype=dtype, logprobs=logprobs, batch_size=batch_size,
                       tensor_parallel=tensor_parallel, max_model_len=max_model_len, api_base=api_base,
                       api_key_env=api_key_env, concurrency=concurrency, cache_dir=cache_dir)
    stage = SampleStage(cfg)
    try:
        execute_stage(data, stage, limit=limit, retry_failed=retry_failed)
    finally:
        stage.close()
