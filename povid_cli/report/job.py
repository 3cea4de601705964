"""The report job: DATA's pairs -> one self-contained HTML page (povid_cli/report/html.py renders it).

What it reads grows with what it shows, not with DATA: the summary and the choice of rows come from a few
light columns (kind, drop reason, variant, ids); the text of the chosen rows, their items' images and
their distorted images (rebuilt from their recipes) are read from the row groups that hold them only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from povid_cli.core.errors import PovidError, RowError
from povid_cli.core.fs import resolve
from povid_cli.core.store import Dataset
from povid_cli.report.html import Summary, render, select, thumbnail

_SKIP = {"image", "extra_images", "rejected_image", "rejected_extra_images"}  # image bytes: read apart
_LIGHT = ["id", "item_id", "kind", "variant", "drop_reason"]


@dataclass
class ReportRun:
    path: str
    items: int
    pairs: int
    dropped: int
    shown: int
    kib: float


def _light(ds: Dataset, name: str) -> list[dict]:
    """Every row of an output, light columns only, with where it lives (_k, _i)."""
    rows: list[dict] = []
    for k in ds.committed_shards(name):
        names = ds.shard(name, k).parquet_schema().names
        t = ds.read_shard(name, k, columns=[c for c in _LIGHT if c in names])
        rows += [{**r, "_k": k, "_i": i} for i, r in enumerate(t.to_pylist())]
    return rows


def _full(ds: Dataset, name: str, rows: list[dict]) -> list[dict]:
    """The chosen rows with every column but the images, from the row groups that hold them."""
    out: dict[int, dict] = {}
    for k in sorted({r["_k"] for r in rows}):
        mine = [r for r in rows if r["_k"] == k]
        loc = ds.shard(name, k)
        cols = [c for c in loc.parquet_schema().names if c not in _SKIP]
        for r, full in zip(mine, loc.read_parquet_take([r["_i"] for r in mine], cols).to_pylist()):
            out[id(r)] = {**full, "drop_reason": full.get("drop_reason")}
    return [out[id(r)] for r in rows]


def _where(ds: Dataset, name: str, key: str, wanted: set) -> dict[int, list[int]]:
    """shard -> row indices of the rows whose `key` is in `wanted` (one column read per shard)."""
    out: dict[int, list[int]] = {}
    for k in ds.committed_shards(name):
        for i, v in enumerate(ds.read_shard(name, k, columns=[key]).column(key).to_pylist()):
            if v in wanted:
                out.setdefault(k, []).append(i)
    return out


def write_report(data: str, output: str, *, limit: int | None = 200, thumb_size: int = 256, no_dropped: bool = False,
                 progress=None) -> ReportRun:
    from stages.distort_recipe import materialise

    ds = Dataset.open(data)
    if not ds.has("items"):
        raise PovidError(f"{ds.root.url} has no items yet; run `povid ingest` first")
    dest = resolve(output)
    if dest.is_dir():
        raise PovidError(f"{dest.url} is a folder; give a file name such as {dest.url.rstrip('/')}/report.html")
    pairs = _light(ds, "pairs") if ds.has("pairs") else []
    all_dropped = _light(ds, "dropped") if ds.has("dropped") else []
    summary = Summary(dataset=ds.root.url, generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    summary.items = sum(ds.num_rows("items", k) for k in ds.committed_shards("items"))
    for r in pairs:
        summary.pairs_by_kind[r["kind"]] = summary.pairs_by_kind.get(r["kind"], 0) + 1
    for r in all_dropped:
        summary.dropped_by_reason[r["drop_reason"]] = summary.dropped_by_reason.get(r["drop_reason"], 0) + 1
    summary.usage = {name: rec.get("usage") or {} for name, rec in ds.manifest.get("stages", {}).items()}

    shown_pairs = _full(ds, "pairs", select(pairs, limit, "kind"))
    for r in shown_pairs:
        r["drop_reason"] = None
    rows = shown_pairs + ([] if no_dropped else _full(ds, "dropped", select(all_dropped, limit, "drop_reason")))
    want = {r["item_id"] for r in rows}
    want_dist = {(r["item_id"], r.get("variant")) for r in rows if r.get("variant")}
    task = progress.add_task("report", total=len(rows)) if progress is not None else None
    items: dict[str, dict] = {}
    for k, idx in _where(ds, "items", "id", want).items():
        loc = ds.shard("items", k)
        cols = [c for c in ("id", "image", "extra_images", "boxes") if c in loc.parquet_schema().names]
        items.update({r["id"]: r for r in loc.read_parquet_take(idx, cols).to_pylist()})
    clean = {i: thumbnail(r["image"]["bytes"], thumb_size) for i, r in items.items()
             if r.get("image") and r["image"].get("bytes")}
    distorted: dict[tuple, bytes] = {}
    if want_dist:
        for k, idx in _where(ds, "distorted", "item_id", {i for i, _ in want_dist}).items():
            for d in ds.shard("distorted", k).read_parquet_take(idx).to_pylist():
                key = (d["item_id"], d["variant"])
                if key not in want_dist or d["item_id"] not in items:
                    continue
                try:
                    d = materialise(items[d["item_id"]], d)
                except RowError:
                    continue  # not rebuilt here: the page shows the clean image only
                if d.get("image") and d["image"].get("bytes"):
                    distorted[key] = thumbnail(d["image"]["bytes"], thumb_size)
    if task is not None:
        progress.update(task, completed=len(rows))
    page = render(summary, rows, clean, distorted)
    dest.write_bytes_atomic(page.encode("utf-8"))
    return ReportRun(dest.url, summary.items, sum(summary.pairs_by_kind.values()), len(all_dropped), len(rows),
                     len(page) / 1024)
