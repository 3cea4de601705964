"""`povid hallucinate DATA [--backend rules|openai] ...`"""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from povid_cli.app import Executor, Limit, RayAddress, RetryFailed, Verbose, Workers, command, execute_stage

HELP = """Write hallucinated (dispreferred) answers into DATA/hallucinated: POVID's first kind of rejected answer.

Each item's correct answer gets a few plausible hallucinations and nothing else changes: an absent object
that often co-occurs with what is there (a fork next to a knife), a wrong count, colour, size or position,
a wrong relation (on/under, holding/throwing); yes/no and reasoning answers get the opposite conclusion
with reasoning that supports it. Every row records its edits (from, to, type).

--backend rules (default) runs offline and is deterministic for a --seed. --backend openai asks any
OpenAI-compatible chat endpoint (OpenAI, a local `vllm serve`, ...): the key comes from the variable named
by --api-key-env (a local server needs none), requests run --concurrency at a time with retries that honour
Retry-After, and every response is cached in DATA/cache/hallucinate, so re-running, resuming or deleting
DATA/hallucinated never pays for the same request twice. Empty answers, refusals and answers identical to
the input go to DATA/failed/hallucinate with a reason. Token usage is in `povid status DATA`.

Examples:

  povid hallucinate data

  povid hallucinate data --backend openai --model gpt-4o-mini --concurrency 32 --rpm 500

  povid hallucinate data --backend openai --api-base http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct
"""


def _help() -> str:
    return "\n\n".join(" ".join(p.split("\n")) if not p.startswith("  ") else p for p in HELP.strip().split("\n\n"))


def default_cache_dir(data: str) -> str:
    """DATA/cache/hallucinate for a local dataset; a per-user folder for one on s3:// or gs://."""
    from povid_cli.core.fs import is_url

    if is_url(data):
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "povid", "hallucinate")
    return os.path.join(data, "cache", "hallucinate")


@command("hallucinate", help=_help())
def hallucinate_cmd(
    data: Annotated[str, typer.Argument(help="The dataset folder (local path or URL) with items.", show_default=False)],
    backend: Annotated[str, typer.Option("--backend", "-b", help="rules (offline, deterministic) or openai (any OpenAI-compatible endpoint).")] = "rules",
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model name for --backend openai.", show_default="gpt-4o-mini")] = None,
    api_base: Annotated[Optional[str], typer.Option("--api-base", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 \\[default: api.openai.com].")] = None,
    api_key_env: Annotated[str, typer.Option("--api-key-env", help="Environment variable that holds the API key (the key itself is never printed or stored).")] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Requests in flight at once.")] = 16,
    rpm: Annotated[Optional[float], typer.Option("--rpm", min=0.1, help="At most this many requests per minute \\[default: no limit].")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds per request before it is retried.")] = 60.0,
    max_retries: Annotated[int, typer.Option("--max-retries", min=0, help="Retries of a request after 429/5xx/timeouts, with exponential backoff.")] = 5,
    n: Annotated[int, typer.Option("--n", min=1, help="Rejected answers per item (ids ITEM-h0, ITEM-h1, ...).")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed: rules picks its edits from it; openai passes it to the server.")] = 0,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature (openai).")] = 0.7,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Longest answer to ask for (openai).")] = 512,
    structured: Annotated[bool, typer.Option("--structured", help="openai: ask for JSON listing the edits (answers that are not that JSON fail).")] = False,
    send_image: Annotated[bool, typer.Option("--send-image", help="openai: attach the image as a data URL (for a VLM endpoint).")] = False,
    cache_dir: Annotated[Optional[str], typer.Option("--cache-dir", help="Response cache folder \\[default: DATA/cache/hallucinate].", show_default=False)] = None,
    workers: Workers = None,
    limit: Limit = None,
    executor: Executor = "local",
    ray_address: RayAddress = None,
    retry_failed: RetryFailed = False,
    verbose: Verbose = 0,
):
    from stages.hallucinate import HallucinateConfig, HallucinateStage

    backend = backend.lower()
    cfg = HallucinateConfig(
        backend=backend, model=model, n=n, seed=seed, structured=structured, send_image=send_image,
        temperature=temperature, max_tokens=max_tokens, api_base=api_base, api_key_env=api_key_env,
        concurrency=concurrency, rpm=rpm, timeout=timeout, max_retries=max_retries,
        cache_dir=(cache_dir or default_cache_dir(data)) if backend == "openai" else None,
    )
    execute_stage(data, HallucinateStage(cfg), workers=workers, limit=limit, executor=executor,
                  ray_address=ray_address, retry_failed=retry_failed)
