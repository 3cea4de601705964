"""The report job: DATA's pairs -> one self-contained HTML page (povid_cli/report/html.py renders it).

Every output is read without its image column; images are read only for the rows the page shows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from povid_cli.core.errors import PovidError
from povid_cli.core.fs import resolve
from povid_cli.core.store import Dataset
from povid_cli.report.html import Summary, render, select, thumbnail

_SKIP = {"image", "rejected_image", "rejected_extra_images"}  # image bytes: read apart, as thumbnails


@dataclass
class ReportRun:
    path: str
    items: int
    pairs: int
    dropped: int
    shown: int
    kib: float


def _light(ds: Dataset, name: str) -> list[dict]:
    """Every row of an output without its image column."""
    rows: list[dict] = []
    for k in ds.committed_shards(name):
        names = ds.shard(name, k).parquet_schema().names
        rows += ds.read_shard(name, k, columns=[c for c in names if c not in _SKIP]).to_pylist()
    return rows


def write_report(data: str, output: str, *, limit: int | None = 200, thumb_size: int = 256, no_dropped: bool = False,
                 progress=None) -> ReportRun:
    ds = Dataset.open(data)
    if not ds.has("items"):
        raise PovidError(f"{ds.root.url} has no items yet; run `povid ingest` first")
    dest = resolve(output)
    if dest.is_dir():
        raise PovidError(f"{dest.url} is a folder; give a file name such as {dest.url.rstrip('/')}/report.html")
    pairs = _light(ds, "pairs") if ds.has("pairs") else []
    all_dropped = _light(ds, "dropped") if ds.has("dropped") else []
    dropped = [] if no_dropped else all_dropped
    for r in pairs:
        r["drop_reason"] = None
    summary = Summary(dataset=ds.root.url, generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    summary.items = sum(ds.num_rows("items", k) for k in ds.committed_shards("items"))
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
    shards = ds.committed_shards("items") + (ds.committed_shards("distorted") if want_dist else [])
    task = progress.add_task("report", total=len(shards)) if progress is not None else None
    for k in ds.committed_shards("items"):
        for r in ds.read_shard("items", k, columns=["id", "image"]).to_pylist():
            if r["id"] in want and r["image"] and r["image"].get("bytes"):
                clean[r["id"]] = thumbnail(r["image"]["bytes"], thumb_size)
        if task is not None:
            progress.advance(task)
    if want_dist:
        for k in ds.committed_shards("distorted"):
            for r in ds.read_shard("distorted", k, columns=["item_id", "variant", "image"]).to_pylist():
                key = (r["item_id"], r["variant"])
                if key in want_dist and r["image"] and r["image"].get("bytes"):
                    distorted[key] = thumbnail(r["image"]["bytes"], thumb_size)
            if task is not None:
                progress.advance(task)
    page = render(summary, rows, clean, distorted)
    dest.write_bytes_atomic(page.encode("utf-8"))
    return ReportRun(dest.url, summary.items, sum(summary.pairs_by_kind.values()), len(all_dropped), len(rows),
                     len(page) / 1024)
