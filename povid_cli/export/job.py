"""Writing an export: DATA's pairs -> OUT in one format, replaced atomically.

`export_dataset(ds, out, fmt)` is what `povid export` and `povid synth --export` call. The export is
written into a temporary sibling folder of OUT and swapped in only when complete (old OUT renamed
away, new one renamed in, old one deleted), so a training job reading the previous export never sees a
half-written one. OUT carries a `povid-export.json` marker; a folder without it is never replaced.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from povid_cli.export import formats as conv

from povid_cli.core.version import __version__
from povid_cli.core.errors import PovidError, UsageError
from povid_cli.core.fs import Location, resolve
from povid_cli.core.store import Dataset, now_iso

MARKER = "povid-export.json"
MAX_EXPORTS_KEPT = 50


def source_pairs(ds: Dataset, kind: str = "all", limit: int | None = None) -> Iterator[list[dict]]:
    """Pair rows shard by shard: `pairs` when filter has run, else items that carry a ready `rejected`."""
    use_pairs = ds.has("pairs")
    left = limit
    for k in ds.shard_ids("pairs" if use_pairs else "items"):
        if left is not None and left <= 0:
            return
        rows = ds.read_shard("pairs" if use_pairs else "items", k).to_pylist()
        pairs = conv.select(rows if use_pairs else conv.pairs_from_items(rows), kind, left)
        if left is not None:
            left -= len(pairs)
        if pairs:
            yield pairs


def _num_rows(loc: Location) -> int:
    import pyarrow.parquet as pq

    with loc.fs.open_input_file(loc.path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def _check_out(ds: Dataset, out: Location) -> None:
    if type(out.fs) is type(ds.root.fs):
        o, d = out.path.rstrip("/\\"), ds.root.path.rstrip("/\\")
        if o == d or d.startswith(o + "/") or d.startswith(o + os.sep):
            raise UsageError(f"the export folder {out.url} would replace the dataset itself; choose another -o")
    if out.exists():
        if not out.is_dir():
            raise PovidError(f"{out.url} exists and is not a folder; refusing to replace it")
        names = out.listdir()
        if names and MARKER not in names:
            raise PovidError(f"{out.url} is not empty and is not a povid export (no {MARKER}); refusing to replace it")


def _sibling(out: Location, prefix: str) -> Location:
    parent = out.parent()
    name = os.path.basename(out.path.rstrip("/"))
    return parent.join(f"{prefix}{uuid.uuid4().hex[:8]}-{name}")


def _move(fs: pafs.FileSystem, src: str, dst: str) -> None:
    if isinstance(fs, pafs.LocalFileSystem):
        os.rename(src, dst)  # atomic for a folder on POSIX
        return
    try:
        fs.move(src, dst)
    except (NotImplementedError, pa.ArrowNotImplementedError, OSError):
        # Object stores cannot rename folders: copy, then remove the source.
        pafs.copy_files(src, dst, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(src)


def swap_in(tmp: Location, out: Location) -> None:
    """Replace OUT by the complete export in `tmp`: old away, new in, old deleted."""
    old = None
    if out.exists():
        old = _sibling(out, ".old-")
        _move(out.fs, out.path, old.path)
    try:
        _move(out.fs, tmp.path, out.path)
    except BaseException:
        if old is not None:  # put the previous export back
            _move(out.fs, old.path, out.path)
        raise
    if old is not None:
        old.delete()


def _write(fmt: str, tmp: Location, batches: Iterator[list[dict]], progress=None, total: int | None = None) -> dict:
    counts = {"rows": 0, "pairs": 0, "images": 0, "files": []}
    kinds: dict[str, int] = {}
    records: list[dict] = []
    written_images: set[str] = set()
    task = progress.add_task("export", total=total) if progress is not None else None
    for i, pairs in enumerate(batches):
        counts["pairs"] += len(pairs)
        for p in pairs:
            kinds[p.get("kind") or "?"] = kinds.get(p.get("kind") or "?", 0) + 1
        if fmt == "trl":
            table = pa.Table.from_pylist(conv.to_trl(pairs), schema=conv.TRL)
            name = f"train-{i:05d}.parquet"
            feats = conv.hf_features(conv.TRL, {"images": "List"})
            tmp.join(name).write_parquet_atomic(table, {"huggingface": json.dumps(feats)})
            counts["rows"] += table.num_rows
            counts["files"].append(name)
        else:
            recs = conv.JSON_CONVERTERS[fmt](pairs)
            if fmt == "llava":  # one record per item, across shards too
                have = {r["id"] for r in records}
                recs = [r for r in recs if r["id"] not in have]
            records.extend(recs)
            for rel, data in conv.image_files(pairs).items():
                if rel not in written_images:
                    tmp.join(*rel.split("/")).write_bytes_atomic(data)
                    written_images.add(rel)
        if task is not None:
            progress.advance(task, len(pairs))
    if task is not None:
        progress.update(task, completed=counts["pairs"], total=counts["pairs"])  # --kind skipped some
    if fmt != "trl":
        name = conv.JSON_FILES[fmt]
        tmp.join(name).write_json_atomic(records)
        counts["rows"] = len(records)
        counts["images"] = len(written_images)
        counts["files"] = [name, "images/"]
    counts["kinds"] = kinds
    return counts


def export_dataset(ds: Dataset, out: str, fmt: str, *, kind: str = "all", limit: int | None = None,
                   progress=None) -> dict:
    """Export DATA's pairs to OUT (local path or URL) in `fmt`; returns a summary, also recorded in the
    manifest under `exports`. The caller holds ds.lock() (the manifest is written)."""
    if fmt not in conv.FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(conv.FORMATS)}")
    if kind not in conv.KINDS:
        raise UsageError(f"unknown kind {kind!r}; choose one of {', '.join(conv.KINDS)}")
    target = resolve(out)
    _check_out(ds, target)
    source = "pairs" if ds.has("pairs") else "items"
    if source == "items" and not ds.has("items"):
        raise PovidError(f"{ds.root.url} has no items yet; run `povid ingest` first")

    target.parent().makedirs()
    tmp = _sibling(target, ".tmp-")
    tmp.makedirs()
    try:
        total = None
        if progress is not None:  # rows to look at, from the Parquet footers (the kind filter may skip some)
            total = sum(_num_rows(ds.shard(source, k)) for k in ds.shard_ids(source))
            total = min(total, limit) if limit is not None else total
        counts = _write(fmt, tmp, source_pairs(ds, kind, limit), progress, total)
        if counts["pairs"] == 0:
            what = "pairs" if kind == "all" else f"{kind} pairs"
            hint = ("" if source == "pairs" else
                    "; run `povid filter` (or `povid synth`) first: before it, only items with a ready rejected "
                    "answer (POVID or TRL input) can be exported")
            raise PovidError(f"{ds.root.url} has no {what} to export{hint}")
        summary = {"format": fmt, "path": target.url, "kind": kind, "rows": counts["rows"], "pairs": counts["pairs"],
                   "kinds": counts["kinds"], "images": counts["images"], "source": source, "limit": limit,
                   "files": counts["files"], "time": now_iso(), "dataset": ds.root.url, "povid_version": __version__}
        tmp.join(MARKER).write_json_atomic(summary)
        swap_in(tmp, target)
    except BaseException:
        if tmp.exists():
            tmp.delete()
        raise
    exports = [e for e in ds.manifest.get("exports", []) if e.get("path") != target.url]
    exports.append({k: summary[k] for k in ("format", "path", "kind", "rows", "pairs", "images", "source", "limit", "time")})
    ds.manifest["exports"] = exports[-MAX_EXPORTS_KEPT:]
    ds.save_manifest()
    return summary
