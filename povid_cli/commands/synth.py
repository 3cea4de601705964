"""`povid synth SRC... -o DATA`: the whole pipeline in one command (see povid_cli/synth/)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from povid_cli.app import Executor, Limit, RayAddress, RetryFailed, Verbose, Workers, command, console, make_progress, out


@command("synth")
def synth_cmd(
    sources: Annotated[Optional[list[str]], typer.Argument(help="Image folders or annotation files (LLaVA/POVID JSON, COCO, TRL Parquet); or `sources` in povid.toml.", show_default=False)] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="The dataset folder (local path or URL). Created if missing; re-runs add only what is new.", show_default=False)] = ...,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="povid.toml with the options of every stage (`povid init` writes one). Flags override it.")] = None,
    image_root: Annotated[Optional[str], typer.Option("--image-root", help="Folder (or URL) that image paths in annotation files are relative to (\\[ingest] image_root) \\[default: the annotation file's folder].")] = None,
    llm_backend: Annotated[Optional[str], typer.Option("--llm-backend", help="hallucinate backend: rules (offline) or openai (any OpenAI-compatible server).")] = None,
    llm_model: Annotated[Optional[str], typer.Option("--llm-model", help="Model name for --llm-backend openai.")] = None,
    api_base: Annotated[Optional[str], typer.Option("--api-base", help="OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1) for hallucinate, and for sample with --sample-backend openai.")] = None,
    vlm: Annotated[Optional[str], typer.Option("--vlm", help="The target VLM (path or name): turns on on-policy sampling on the distorted images.")] = None,
    sample_backend: Annotated[Optional[str], typer.Option("--sample-backend", help="vllm | transformers | openai \\[default: auto: vllm on a GPU if installed, else transformers].")] = None,
    distort: Annotated[Optional[list[str]], typer.Option("--distort", help="Distortion METHOD[:k=v,...] (repeat for several) \\[default: diffusion].")] = None,
    kinds: Annotated[Optional[str], typer.Option("--kinds", metavar="KIND,...", help="Pairs to make (\\[filter] kinds): text, image, contrast, corrected \\[default: text,image]. contrast: the answer under the clean vs a distorted image (mDPO, V-DPO, CHiP); corrected (OPA-DPO: the model's own answers on the clean images vs their minimal correction) needs --vlm and runs `correct` (\\[correct]).")] = None,
    export: Annotated[Optional[str], typer.Option("--export", help="Export format at the end: trl | povid | llava | sharegpt | none \\[default: trl].")] = None,
    export_dir: Annotated[Optional[str], typer.Option("--export-dir", help="Where the export goes \\[default: DATA/export/FORMAT]; replaced atomically.")] = None,
    executor: Executor = None,
    ray_address: RayAddress = None,
    workers: Workers = None,
    retry_failed: RetryFailed = False,
    limit: Limit = None,
    verbose: Verbose = 0,
):
    """Run the whole pipeline: ingest -> hallucinate -> distort -> \\[sample] -> \\[correct] -> filter -> export.

    Made to be run again and again (from cron): every stage resumes and skips what is done, so a
    folder that gained images costs only the new ones, and a changed stage option re-runs that
    stage and the ones after it, nothing before. One lock keeps a second run off DATA; a run killed
    at any moment (even kill -9) and started again ends exactly where an uninterrupted run would.
    Sampling with the target VLM runs only with --vlm; `correct` only with --kinds ...,corrected.
    Exit code 0 when every row went through, 1 when some failed (the rest is written; see
    DATA/failed/), 2 on bad options.

    Examples:

      povid synth photos/ -o data                             # offline: rules + diffusion noise

      povid synth llava.json -o data --config povid.toml --export trl --export-dir data-trl

      povid synth coco.json -o data --llm-backend openai --llm-model gpt-4o-mini \\
          --vlm Qwen/Qwen2-VL-2B-Instruct --sample-backend vllm

      povid synth coco.json -o data --vlm Qwen/Qwen2-VL-2B-Instruct --kinds text,image,corrected

      povid synth s3://bucket/imgs -o s3://bucket/data --executor ray --ray-address auto

    Crontab (hourly refresh, logs appended):

      0 * * * *  cd /srv/povid && povid synth incoming/ -o data -c povid.toml >> synth.log 2>&1
    """
    from povid_cli.synth import config_file
    from povid_cli.synth.plan import resolve
    from povid_cli.synth.run import run_synth

    toml = config_file.load(config)
    flags = dict(image_root=image_root, llm_backend=llm_backend, llm_model=llm_model, api_base=api_base, vlm=vlm,
                 sample_backend=sample_backend, distort=distort, export=export, export_dir=export_dir,
                 kinds=[k.strip().lower() for k in kinds.split(",") if k.strip()] if kinds else None,
                 executor=executor, ray_address=ray_address, workers=workers, limit=limit,
                 retry_failed=retry_failed or None)
    plan = resolve(toml, sources or [], flags, data=output)
    with make_progress() as progress:
        result = run_synth(output, plan, progress=progress)
    print_summary(result, plan)
    if result.failed:
        for line in result.failures[:5]:
            console.print(f"  [yellow]failed[/yellow] {escape(line)}")
        console.print(f"  {result.failed} row(s) failed: see {escape(output)}/failed/ (`povid status {escape(output)}`); "
                      "run again to retry transient failures")
        raise typer.Exit(1)


def print_summary(result, plan) -> None:
    """The closing table (stdout): rows per stage, failures, time, tokens; then pairs, drops, export."""
    from rich.table import Table

    t = Table(box=None, pad_edge=False, header_style="bold")
    t.add_column("stage", no_wrap=True, min_width=11)
    for col in ("in", "new", "total", "failed", "shards", "time", "tokens"):
        t.add_column(col, justify="right", no_wrap=True)
    notes = []
    steps = list(result.steps)
    order = ["ingest", "hallucinate", "distort", "sample", "correct", "filter"]
    steps.sort(key=lambda s: order.index(s.stage) if s.stage in order else len(order))
    for s in steps:
        if s.stage == "filter" and "sample" in plan.skipped:
            t.add_row("sample", "-", "-", "-", "-", "-", "-", "-")
            notes.append("sample: skipped (give --vlm to sample the target model on distorted images)")
        t.add_row(s.stage, str(s.rows_in), str(s.rows_new), str(s.rows_total),
                  f"[red]{s.failed}[/red]" if s.failed else "0", f"{s.shards_run} run/{s.shards_skipped} done",
                  f"{s.seconds:.1f}s", str(s.tokens) if s.tokens else "-")
        if s.note:
            notes.append(f"{s.stage}: {s.note}")
    e = result.export
    if e is not None:
        t.add_row("export", "-", "0" if e.get("skipped") else str(e.get("rows", 0)), str(e.get("rows", 0)),
                  "0", "-", f"{e.get('seconds', 0):.1f}s", "-")
        what = e.get("note") or ("unchanged since the last run" if e.get("skipped") else "written")
        notes.append(f"export ({e['format']}): {what}: {e['path']}")
    out.print(t)
    kinds = ", ".join(f"{k} {n}" for k, n in result.pairs_by_kind.items()) or "none"
    drops = ", ".join(f"{k} {n}" for k, n in result.drops_by_reason.items()) or "none"
    out.print(escape(f"pairs: {kinds}; dropped: {drops}; {result.seconds:.1f}s in all"))
    for n in notes:
        out.print(escape(n))
