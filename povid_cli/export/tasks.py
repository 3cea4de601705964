"""The export tasks, run by workers: each converts one source shard into the export's temporary folder.

- `ConvertTask`: shard k of `pairs` (or of `items` and `given` before filter has run) -> `train-KKKKK.parquet` (trl),
  or -> its images under images/ plus a fragment of JSON records `.records/KKKKK.json` (povid, llava, sharegpt).
- `ReuseTask`: shard k has not changed since the previous export (same key): its files are linked from there
  (a hard link locally, a server-side copy on an object store) instead of converted again.
- `AssembleTask`: the JSON formats' fragments -> the one JSON file, in shard order (llava: one record per
  item across shards). The fragments stay, for the next export to reuse.
Files are named by source shard, so an unchanged shard keeps its name from one export to the next. Only
counts go back to the driver; the driver swaps the finished folder in (povid_cli/export/job.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pyarrow as pa

from povid_cli.core.fs import resolve
from povid_cli.core.items import attach_images
from stages import contrast
from povid_cli.core.store import Dataset
from povid_cli.export import formats as conv
from stages.weights import normalise

RECORDS = ".records"


@dataclass(frozen=True)
class ConvertTask:
    root: str              # DATA
    tmp: str               # the export being built
    fmt: str
    source: str            # pairs | items
    k: int
    index: int             # position in the export (file names, JSON order)
    kind: str
    take: int | None       # pairs of `kind` to take from this shard (None: all)
    weights: tuple[float, float] | None = None  # (min, max) of `weight_score` over all pairs: weighted export
    contrast: bool = False  # the export holds contrast pairs: trl gets the `rejected_images` column
    key: str = ""          # what the shard's files are made from (export/job.py: shard_key)


@dataclass(frozen=True)
class ReuseTask:
    previous: str          # the export this one replaces
    tmp: str
    k: int
    index: int
    record: dict           # the shard's entry in the previous export's marker (its files and counts)
    fallback: ConvertTask  # what to do when a file is gone from the previous export


@dataclass(frozen=True)
class AssembleTask:
    tmp: str
    fmt: str
    fragments: tuple[int, ...]  # source shards, in order


@dataclass
class ConvertResult:
    index: int
    pairs: int = 0
    rows: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    skipped: int = 0       # pairs the format cannot hold (contrast pairs in a format without a rejected image)
    images: int = 0
    files: list[str] = field(default_factory=list)
    image_files: list[str] = field(default_factory=list)  # JSON formats: the images/ files this shard refers to
    seconds: float = 0.0
    reused: bool = False

    def record(self, key: str) -> dict:
        """The shard's entry in the export's marker: what a later export needs to reuse its files."""
        return {"key": key, "files": self.files, "image_files": self.image_files, "pairs": self.pairs,
                "rows": self.rows, "kinds": self.kinds, "skipped": self.skipped}


def run(task: ConvertTask | ReuseTask | AssembleTask) -> ConvertResult:
    if isinstance(task, AssembleTask):
        return assemble(task)
    return reuse(task) if isinstance(task, ReuseTask) else convert(task)


def trl_name(k: int) -> str:
    return f"train-{k:05d}.parquet"


def fragment(tmp, k: int):
    return resolve(tmp).join(RECORDS, f"{k:05d}.json")


def shard_pairs(ds: Dataset, source: str, k: int, kind: str, take: int | None) -> list[dict]:
    rows = ds.read_shard(source, k).to_pylist()
    if source == "pairs":
        # the images live in items, a contrast pair's rejected ones in distorted (stored once)
        return attach_images(ds, k, conv.select(rows, kind, take), rebuild=contrast.rejected_images)
    given = ds.read_shard("given", k).to_pylist() if ds.shard("given", k).exists() else []
    return conv.select(conv.pairs_from_items(rows, given), kind, take)


def count_given(ds: Dataset, k: int) -> int:
    """The given pairs of items shard k that export would write (items with an answer), from light columns."""
    names = ds.shard("items", k).parquet_schema().names
    items = ds.read_shard("items", k, columns=["id", "has_answer"] + (["rejected"] if "rejected" in names else []))
    answered = {r["id"]: bool(r.get("rejected")) for r in items.to_pylist() if r["has_answer"] is not False}
    n = sum(answered.values())  # a format-1 dataset's one `rejected` per item
    if ds.shard("given", k).exists():
        n += sum(1 for i in ds.read_shard("given", k, columns=["item_id"]).column("item_id").to_pylist() if i in answered)
    return n


def convert(task: ConvertTask) -> ConvertResult:
    t0 = time.perf_counter()
    pairs = shard_pairs(Dataset.at(task.root), task.source, task.k, task.kind, task.take)
    pairs, skipped = conv.split_rejected_images(pairs, task.fmt)
    if task.weights is not None:
        for p in pairs:
            p["weight"] = normalise(p.get("weight_score"), *task.weights)
    tmp = resolve(task.tmp)
    res = ConvertResult(task.index, pairs=len(pairs), skipped=skipped)
    for p in pairs:
        res.kinds[p.get("kind") or "?"] = res.kinds.get(p.get("kind") or "?", 0) + 1
    if task.fmt == "trl":
        schema = conv.trl_schema(task.weights is not None, task.contrast)
        table = pa.Table.from_pylist(conv.to_trl(pairs, task.weights is not None, task.contrast), schema=schema)
        name = trl_name(task.k)
        feats = conv.hf_features(schema, conv.IMAGE_COLUMNS)
        tmp.join(name).write_parquet_atomic(table, {"huggingface": json.dumps(feats)})
        res.rows, res.files = table.num_rows, [name]
    else:
        for rel, data in conv.image_files(pairs).items():
            dest = tmp.join(*rel.split("/"))
            res.image_files.append(rel)
            if not dest.exists():  # named by content: another task may have written the same image
                dest.write_bytes_atomic(data)
                res.images += 1
        records = conv.JSON_CONVERTERS[task.fmt](pairs)
        fragment(task.tmp, task.k).write_json_atomic(records)
        res.rows = len(records)
    res.seconds = time.perf_counter() - t0
    return res


def reuse(task: ReuseTask) -> ConvertResult:
    """Link an unchanged shard's files (and, for the JSON formats, its fragment and images) from the previous
    export into the new one."""
    t0 = time.perf_counter()
    prev, tmp, r = resolve(task.previous), resolve(task.tmp), task.record
    # trl: the shard's parquet file; a JSON format: its fragment of records and the images they name
    names = list(r["files"]) or [f"{RECORDS}/{task.k:05d}.json", *r["image_files"]]
    try:
        for rel in names:
            dest = tmp.join(*rel.split("/"))
            if not dest.exists():  # images are named by content: another shard may have linked it already
                prev.join(*rel.split("/")).link_to(dest)
    except FileNotFoundError:  # someone removed a file from the export: convert the shard again
        return convert(task.fallback)
    return ConvertResult(task.index, pairs=r["pairs"], rows=r["rows"], kinds=dict(r["kinds"]), skipped=r["skipped"],
                         files=list(r["files"]), image_files=list(r["image_files"]),
                         seconds=time.perf_counter() - t0, reused=True)


def assemble(task: AssembleTask) -> ConvertResult:
    """Write the JSON file from the fragments; llava keeps the first record of each item."""
    t0 = time.perf_counter()
    tmp = resolve(task.tmp)
    records, seen = [], set()
    for k in task.fragments:
        for r in fragment(task.tmp, k).read_json():
            if task.fmt == "llava":
                if r["id"] in seen:
                    continue
                seen.add(r["id"])
            records.append(r)
    name = conv.JSON_FILES[task.fmt]
    tmp.join(name).write_json_atomic(records)
    images = len(tmp.join("images").listdir())
    return ConvertResult(-1, rows=len(records), images=images, files=[name, "images/"],
                         seconds=time.perf_counter() - t0)
