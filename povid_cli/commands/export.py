"""`povid export DATA -o OUT --format trl|povid|llava|sharegpt`"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from povid_cli.app import Limit, Verbose, Workers, command, console, make_progress, out


@command("export")
def export_cmd(
    data: Annotated[str, typer.Argument(help="The povid dataset (local path or URL).", show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="The export folder (local path or URL). Replaced atomically if it holds an earlier export.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", "-f", help="trl (Parquet for trl.DPOTrainer) | povid (POVID repo JSON) | llava (chosen answers) | sharegpt (chosen/rejected JSON).")] = "trl",
    kind: Annotated[str, typer.Option("--kind", help="Which pairs: text (hallucinate), image (distort + sample), contrast (filter --kinds ...,contrast) or all.")] = "all",
    workers: Workers = None,
    limit: Limit = None,
    verbose: Verbose = 0,
):
    """Write DATA's preference pairs in a format training code reads.

    Reads DATA/pairs (what `povid filter` kept); before filter has run, items that came with a ready
    rejected answer (POVID JSON, TRL Parquet) are exported as text pairs. OUT is written beside
    itself and swapped in only when complete, so a job reading the previous export never sees half
    of a new one. Each export is recorded in DATA/manifest.json (see `povid status`).

    Formats:

      trl       OUT/train-NNNNN.parquet: images (list of images), prompt/chosen/rejected as
                conversations, kind, id, item_id, source, source_id, task (and weight
                after `filter --weight-by`: the score scaled to [0.2, 1] over all pairs).
                datasets.load_dataset("parquet", data_dir=OUT) feeds trl.DPOTrainer directly.
                With contrast pairs, povid's extension `rejected_images` (the images the
                rejected side is read under; `povid train` reads it, plain TRL ignores it).

      povid     OUT/povid.json (conversations + rejected_conversations, as in the POVID repo)
                and OUT/images/. No place for a rejected image: contrast pairs are left out
                (the export says how many); sharegpt too.

      llava     OUT/llava.json with the chosen answers (one record per item) and OUT/images/.

      sharegpt  OUT/sharegpt.json (conversations, chosen, rejected, images) and OUT/images/.

    Examples:

      povid export data -o data-trl --format trl

      povid export data -o s3://bucket/povid-text --format trl --kind text

      povid export data -o povid-json --format povid --limit 100
    """
    from povid_cli.export.job import run_export

    with make_progress() as progress:
        s = run_export(data, output, fmt.lower(), kind=kind.lower(), limit=limit, workers=workers, progress=progress)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(s["kinds"].items()))
    what = f"{s['rows']} rows" + (f" ({s['images']} images)" if s["images"] else "")
    shards = f"; {s['converted_shards']} shard(s) converted, {s['reused_shards']} unchanged (linked)" \
        if s.get("reused_shards") else ""
    console.print(escape(f"export: {s['pairs']} pairs from {s['source']} ({kinds}) -> {what}, format {s['format']}"
                         + shards))
    if s.get("skipped"):
        console.print(escape(f"skipped {s['skipped']['contrast']} contrast pair(s): {s['format']} has no place for the "
                             "rejected image (--format trl keeps them as `rejected_images`)"))
    if s.get("weights"):
        w = s["weights"]
        console.print(escape(f"weights: weight_score {w['score_min']:g}..{w['score_max']:g} scaled to "
                             f"[{w['floor']:g}, 1] (a `weight` column; povid train --weight-column weight)"))
    out.print(escape(s["path"]))
