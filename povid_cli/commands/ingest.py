"""`povid ingest SRC... -o DATA` (options: povid_cli/ingest/normalise.py, IngestConfig)"""

from __future__ import annotations

import inspect
from typing import Annotated

import typer
from rich.markup import escape

from povid_cli.app import Limit, Verbose, Workers, command, console, make_progress, reflow
from povid_cli.core import options
from povid_cli.ingest.normalise import IngestConfig

HELP = """Read images, prompts, answers and given rejected answers into DATA/items (and DATA/given).

Sources: image folders, LLaVA/POVID/ShareGPT JSON(L), COCO captions (+ instances for objects and
boxes), and preference datasets in their own layouts (TRL, RLAIF-V, VLFeedback, HA-DPO, mDPO,
OPA-DPO), as JSON, JSONL, Parquet files or folders (the Hub's data/*.parquet), datasets.save_to_disk
folders, local or as URLs; the layout is recognised from the columns (--map for others).

Every item (images, prompt, chosen answer) gets a stable id, so running the same command again
(from cron, say) adds only what is new; every rejected answer a source gives is kept as a given pair
of its item. Images are checked and normalised on the way in (EXIF orientation, RGB). The summary
accounts for every record: new items, already present, skipped (text-only...: exit 0; --strict makes
them failures) and failed (in DATA/failed/ingest with a reason: exit 1).

Examples:

  povid ingest llava_instruct.json --image-root coco/train2017 -o data

  povid ingest photos/ --prompt "Describe this image in detail." -o data

  povid ingest RLAIF-V-Dataset/ -o data                        # data/*.parquet, images inside

  povid ingest vqa.jsonl --map prompt=question,chosen=answer,image=file -o data
"""


def ingest_cmd(sources: list[str], output: str, workers: int | None = None, limit: int | None = None,
               verbose: int = 0, **kw):
    from povid_cli.ingest.job import run_ingest

    with make_progress() as progress:
        ds, run = run_ingest(output, sources, options.from_flags(IngestConfig, kw), workers=workers, limit=limit,
                             progress=progress)
    console.print(escape(run.line()))
    if run.failed:
        for f in run.failures[:5]:
            console.print(f"  [yellow]failed[/yellow] {escape(f['error'])}")
        console.print(f"  {run.failed} record(s) failed: see {ds.root.url}/failed/ingest/")
        raise typer.Exit(1)


_P = inspect.Parameter
PARAMS = [
    _P("sources", _P.POSITIONAL_OR_KEYWORD, annotation=Annotated[list[str], typer.Argument(
        help="Image folders, annotation or preference files (JSON, JSONL, Parquet, Arrow), Parquet or "
             "save_to_disk folders; local paths or URLs.",
        metavar="SRC...", show_default=False)]),
    _P("output", _P.KEYWORD_ONLY, annotation=Annotated[str, typer.Option(
        "--output", "-o", help="The dataset folder (local path or URL such as s3://bucket/data). Created if missing.")]),
    *options.typer_parameters(IngestConfig),
    _P("workers", _P.KEYWORD_ONLY, default=None, annotation=Workers),
    _P("limit", _P.KEYWORD_ONLY, default=None, annotation=Limit),
    _P("verbose", _P.KEYWORD_ONLY, default=0, annotation=Verbose),
]
command("ingest", help=reflow(HELP))(options.signature_command(ingest_cmd, PARAMS))
