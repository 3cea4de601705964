"""`povid ingest SRC... -o DATA`"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from povid_cli.app import Limit, Verbose, Workers, command, console, make_progress


@command("ingest")
def ingest_cmd(
    sources: Annotated[list[str], typer.Argument(help="Image folders, LLaVA/POVID JSON(L), COCO captions/instances JSON, or TRL Parquet files.", show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="The dataset folder (local path or URL such as s3://bucket/data). Created if missing.")],
    image_root: Annotated[Optional[str], typer.Option("--image-root", help="Folder that image paths in annotation files are relative to \\[default: the annotation file's folder].")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Prompt for images from a folder or COCO captions \\[default: 'Describe this image in detail.'].")] = None,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="Items per shard: the unit of work, resume and parallelism.")] = 512,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, help="Refuse images with more pixels than this (decompression bombs).")] = 89_478_485,
    workers: Workers = None,
    limit: Limit = None,
    verbose: Verbose = 0,
):
    """Read images and their ground-truth answers into DATA/items.

    Every (image, prompt) gets a stable id from the image bytes and the prompt, so running the same
    command again (from cron, say) adds only what is new. Images are checked and normalised on the
    way in (EXIF orientation, RGB); records that cannot be used go to DATA/failed/ingest with a reason,
    and the exit code is 1 when there are any.

    Examples:

      povid ingest llava_instruct.json --image-root coco/train2017 -o data

      povid ingest photos/ --prompt "Describe this image in detail." -o data
    """
    from povid_cli.core.executors import make_executor
    from povid_cli.ingest.job import check_sources, ingest
    from povid_cli.core.store import Dataset
    from povid_cli.ingest.normalise import IngestConfig

    check_sources(sources)
    cfg = IngestConfig(image_root=image_root, prompt=prompt, shard_size=shard_size, max_pixels=max_pixels)
    ds = Dataset.open_or_create(output)
    with ds.lock():
        ex = make_executor("local", workers)
        try:
            with make_progress() as progress:
                run = ingest(ds, sources, cfg, ex, limit=limit, progress=progress)
        finally:
            ex.close()
    console.print(escape(run.line()))
    if run.failed:
        for f in run.failures[:5]:
            console.print(f"  [yellow]failed[/yellow] {escape(f['error'])}")
        console.print(f"  {run.failed} record(s) failed: see {ds.root.url}/failed/ingest/")
        raise typer.Exit(1)
