"""`povid report DATA -o report.html`"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from povid_cli.app import Verbose, command, console, make_progress, out

_SKIP = {"image"}


@command("report")
def report_cmd(
    data: Annotated[str, typer.Argument(help="The dataset folder (local path or URL).", show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="The HTML file to write.")] = "report.html",
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Show at most N kept pairs and N dropped rows (spread over kinds and drop reasons); the summary counts everything.")] = 200,
    thumb_size: Annotated[int, typer.Option("--thumb-size", min=32, max=2048, help="Long side of the inlined thumbnails, in pixels.")] = 256,
    no_dropped: Annotated[bool, typer.Option("--no-dropped", help="Show kept pairs only.")] = False,
    verbose: Verbose = 0,
):
    """Write a self-contained HTML page to look at the pairs: DATA's pairs side by side.

    Summary figures (items, pairs per kind, drop reasons, token cost of the API stages), then each pair:
    the clean image and the distorted one (image pairs), the prompt, chosen and rejected with the changed
    words highlighted, the scores and the drop reason. Filter by kind, kept / dropped and drop reason;
    the filters live in the URL fragment (report.html#kind=image&reason=duplicate). Images are inlined
    as small thumbnails, so the file can be mailed or attached to a PR as it is.

    Examples:

      povid report data -o report.html

      povid report data -o report.html --limit 50 --no-dropped
    """
    import datetime as dt

    from povid_cli.core.errors import PovidError
    from povid_cli.core.fs import resolve
    from povid_cli.core.store import Dataset
    from povid_cli.report.html import Summary, render, select, thumbnail

    ds = Dataset.open(data)
    if not ds.has("items"):
        raise PovidError(f"{ds.root.url} has no items yet; run `povid ingest` first")

    def light(name: str) -> list[dict]:
        """Every row of an output without its image column (images are read for the shown rows only)."""
        import pyarrow.parquet as pq

        rows: list[dict] = []
        for k in ds.shard_ids(name):
            loc = ds.shard(name, k)
            with loc.fs.open_input_file(loc.path) as f:
                names = pq.ParquetFile(f).schema_arrow.names
            rows += ds.read_shard(name, k, columns=[c for c in names if c not in _SKIP]).to_pylist()
        return rows

    pairs = light("pairs") if ds.has("pairs") else []
    dropped = light("dropped") if ds.has("dropped") and not no_dropped else []
    all_dropped = dropped if not no_dropped else (light("dropped") if ds.has("dropped") else [])
    for r in pairs:
        r["drop_reason"] = None
    summary = Summary(dataset=ds.root.url, generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    summary.items = sum(ds.read_shard("items", k, columns=["id"]).num_rows for k in ds.shard_ids("items"))
    for r in pairs:
        summary.pairs_by_kind[r["kind"]] = summary.pairs_by_kind.get(r["kind"], 0) + 1
    for r in all_dropped:
        summary.dropped_by_reason[r["drop_reason"]] = summary.dropped_by_reason.get(r["drop_reason"], 0) + 1
    summary.usage = {name: rec.get("usage") or {} for name, rec in ds.manifest.get("stages", {}).items()}

    rows = select(pairs, limit, "kind") + select(dropped, limit, "drop_reason")
    want = {r["item_id"] for r in rows}
    want_dist = {(r["item_id"], r.get("variant")) for r in rows if r.get("variant")}
    clean: dict[str, bytes] = {}
    distorted: dict[tuple, bytes] = {}
    with make_progress() as progress:
        shards = ds.shard_ids("items") + (ds.shard_ids("distorted") if want_dist else [])
        task = progress.add_task("report", total=len(shards))
        for k in ds.shard_ids("items"):
            for r in ds.read_shard("items", k, columns=["id", "image"]).to_pylist():
                if r["id"] in want and r["image"] and r["image"].get("bytes"):
                    clean[r["id"]] = thumbnail(r["image"]["bytes"], thumb_size)
            progress.advance(task)
        if want_dist:
            for k in ds.shard_ids("distorted"):
                for r in ds.read_shard("distorted", k, columns=["item_id", "variant", "image"]).to_pylist():
                    key = (r["item_id"], r["variant"])
                    if key in want_dist and r["image"] and r["image"].get("bytes"):
                        distorted[key] = thumbnail(r["image"]["bytes"], thumb_size)
                progress.advance(task)

    page = render(summary, rows, clean, distorted)
    dest = resolve(output)
    if dest.is_dir():
        raise PovidError(f"{dest.url} is a folder; give a file name such as {dest.url.rstrip('/')}/report.html")
    dest.write_bytes_atomic(page.encode("utf-8"))
    n_pairs, n_dropped = sum(summary.pairs_by_kind.values()), len(all_dropped)
    console.print(escape(f"report: {summary.items} items, {n_pairs} pairs, {n_dropped} dropped; "
                         f"showing {len(rows)} rows ({len(page) / 1024:.0f} KiB)"))
    out.print(escape(dest.url))
