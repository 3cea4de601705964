"""`povid filter DATA`"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from povid_cli.app import Limit, RetryFailed, Verbose, command, console, execute_stage

_T = "Tuning"
_J = "Judge (optional)"


@command("filter")
def filter_cmd(
    data: Annotated[str, typer.Argument(help="The dataset folder (local path or URL) with items and hallucinated and/or sampled.", show_default=False)],
    min_words: Annotated[int, typer.Option("--min-words", min=0, help="too_short: drop rejected answers with fewer words (0: off).", rich_help_panel=_T)] = 2,
    min_length_ratio: Annotated[float, typer.Option("--min-length-ratio", min=0.0, help="too_short: drop rejected answers shorter than this x chosen's words (0: off).", rich_help_panel=_T)] = 0.2,
    keep_truncated: Annotated[bool, typer.Option("--keep-truncated", help="Keep sampled answers cut at max_tokens (finish reason 'length').", rich_help_panel=_T)] = False,
    max_repetition: Annotated[float, typer.Option("--max-repetition", min=0.0, max=1.0, help="repetition: drop answers whose share of repeated word 3-grams is above this (1: off).", rich_help_panel=_T)] = 0.5,
    keep_refusals: Annotated[bool, typer.Option("--keep-refusals", help="Keep 'I'm sorry, I can't ...' answers.", rich_help_panel=_T)] = False,
    keep_identical: Annotated[bool, typer.Option("--keep-identical", help="Keep rejected answers equal to chosen up to case, whitespace and punctuation.", rich_help_panel=_T)] = False,
    min_similarity: Annotated[float, typer.Option("--min-similarity", min=0.0, max=1.0, help="rewritten: text pairs below this word-level similarity to chosen are dropped (0: off).", rich_help_panel=_T)] = 0.45,
    no_hallucination_check: Annotated[bool, typer.Option("--no-hallucination-check", help="Keep text pairs with no detectable hallucination (object, number, colour, attribute, relation).", rich_help_panel=_T)] = False,
    require_hallucination: Annotated[bool, typer.Option("--require-hallucination", help="Image pairs must carry a detectable hallucination too.", rich_help_panel=_T)] = False,
    keep_same_content: Annotated[bool, typer.Option("--keep-same-content", help="Keep image pairs whose rejected says nothing chosen does not.", rich_help_panel=_T)] = False,
    min_logprob: Annotated[Optional[float], typer.Option("--min-logprob", help="off_policy: drop sampled answers whose mean token log-prob under the clean image is below this (needs sample --logprobs).", rich_help_panel=_T)] = None,
    no_dedup: Annotated[bool, typer.Option("--no-dedup", help="Keep exact and near-duplicate rejected answers.", rich_help_panel=_T)] = False,
    near_dup_threshold: Annotated[float, typer.Option("--near-dup-threshold", min=0.01, max=1.0, help="Estimated Jaccard of word 3-grams (MinHash) at which two rejected answers are near-duplicates (1: exact only).", rich_help_panel=_T)] = 0.9,
    dedup_scope: Annotated[str, typer.Option("--dedup-scope", help="Where a duplicate counts: dataset, prompt (same question) or item.", rich_help_panel=_T)] = "dataset",
    judge: Annotated[Optional[str], typer.Option("--judge", metavar="MODEL", help="An OpenAI-compatible model that must confirm each kept rejected answer contradicts the image / ground truth.", rich_help_panel=_J)] = None,
    api_base: Annotated[Optional[str], typer.Option("--api-base", help="Endpoint of the judge (e.g. http://127.0.0.1:8000/v1 for `vllm serve`) \\[default: OpenAI].", rich_help_panel=_J)] = None,
    api_key_env: Annotated[str, typer.Option("--api-key-env", help="Environment variable that holds the API key.", rich_help_panel=_J)] = "OPENAI_API_KEY",
    judge_text_only: Annotated[bool, typer.Option("--judge-text-only", help="Do not send the image: judge against the reference answer only (for text-only models).", rich_help_panel=_J)] = False,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Judge requests in flight.", rich_help_panel=_J)] = 16,
    rpm: Annotated[Optional[float], typer.Option("--rpm", min=0.1, help="Judge requests per minute.", rich_help_panel=_J)] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds per judge request.", rich_help_panel=_J)] = 60.0,
    max_retries: Annotated[int, typer.Option("--max-retries", min=0, help="Retries of transient judge errors (429, 5xx, timeouts).", rich_help_panel=_J)] = 5,
    cache_dir: Annotated[Optional[str], typer.Option("--cache-dir", help="Judge response cache \\[default: DATA/cache/filter for local datasets].", rich_help_panel=_J)] = None,
    limit: Limit = None,
    retry_failed: RetryFailed = False,
    verbose: Verbose = 0,
):
    """Keep the pairs that teach: DATA/pairs (kept) and DATA/dropped (with a drop_reason per row).

    Candidates are every `hallucinated` answer and an item's own `rejected` (kind text), and each of
    the n `sampled` answers (kind image). Drop reasons, each on by default and tunable below: no_chosen,
    empty, identical (up to case, whitespace and punctuation; a one-word object swap is a good pair),
    refusal, truncated, repetition, too_short, rewritten (text pairs too far from chosen),
    no_hallucination (text pairs need an object absent from the ground truth, CHAIR-style, or a changed
    number / colour / attribute / relation), same_content (image pairs that say nothing new), off_policy,
    duplicate / near_duplicate (MinHash over the whole dataset, first occurrence kept), and with --judge
    judge_rejected / judge_unclear.

    Scores (similarity, n_edits, hallucinated_objects, changed_attributes, repetition, logprob, judge
    verdict) are stored on both tables, so you can re-filter with pandas without running anything again.
    Shards run in order (first occurrence wins), and a run that finds new shards only filters those.

    Examples:

      povid filter data

      povid filter data --min-similarity 0.6 --near-dup-threshold 0.8

      povid filter data --judge gpt-4o-mini --concurrency 32

      povid filter data --judge Qwen/Qwen2-VL-7B-Instruct --api-base http://127.0.0.1:8000/v1
    """
    from povid_cli.core.errors import UsageError
    from povid_cli.core.fs import resolve
    from povid_cli.core.store import Dataset
    from stages.filter import FilterConfig, FilterStage

    ds = Dataset.open(data)
    if not (ds.has("hallucinated") or ds.has("sampled")) and ds.has("items"):
        t = ds.read_all("items", columns=["rejected"])
        if t is None or t.column("rejected").null_count == t.num_rows:
            raise UsageError(f"{ds.root.url} has nothing to filter yet: run `povid hallucinate` and/or "
                             "`povid distort` + `povid sample` first (or ingest data with rejected answers)")
    if judge and cache_dir is None and ds.root.is_local:
        cache_dir = resolve(data).join("cache", "filter").path
    cfg = FilterConfig(
        min_words=min_words, min_length_ratio=min_length_ratio, drop_truncated=not keep_truncated,
        max_repetition=max_repetition, drop_refusals=not keep_refusals, drop_identical=not keep_identical,
        min_similarity=min_similarity, text_hallucination=not no_hallucination_check,
        image_hallucination=require_hallucination, image_new_content=not keep_same_content,
        min_logprob=min_logprob, dedup=not no_dedup, near_dup_threshold=near_dup_threshold,
        dedup_scope=dedup_scope, judge_model=judge, judge_image=not judge_text_only, api_base=api_base,
        api_key_env=api_key_env, concurrency=concurrency, rpm=rpm, timeout=timeout, max_retries=max_retries,
        cache_dir=cache_dir,
    )
    run = execute_stage(data, FilterStage(cfg), limit=limit, retry_failed=retry_failed)
    if run.shards_run:
        _print_reasons(Dataset.open(data))


def _print_reasons(ds) -> None:
    t = ds.read_all("dropped", columns=["drop_reason"])
    if t is None or t.num_rows == 0:
        return
    counts: dict[str, int] = {}
    for r in t.column("drop_reason").to_pylist():
        counts[r] = counts.get(r, 0) + 1
    console.print("  dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
