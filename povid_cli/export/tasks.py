"""The export tasks, run by workers: each converts one source shard into the export's temporary folder.

- `ConvertTask`: shard k of `pairs` (or of `items` and `given` before filter has run) -> `train-NNNNN.parquet` (trl),
  or -> its images under images/ plus a fragment of JSON records under .records/ (povid, llava, sharegpt).
- `AssembleTask`: the JSON formats' fragments -> the one JSON file, in shard order (llava: one record per
  item across shards), then the fragments are removed.
Only counts go back to the driver; the driver swaps the finished folder in (povid_cli/export/job.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pyarrow as pa

from povid_cli.core.fs import resolve
from povid_cli.core.items import attach_images
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


@dataclass(frozen=True)
class AssembleTask:
    tmp: str
    fmt: str
    fragments: tuple[int, ...]  # indexes, in order


@dataclass
class ConvertResult:
    index: int
    pairs: int = 0
    rows: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    skipped: int = 0       # pairs the format cannot hold (contrast pairs in a format without a rejected image)
    images: int = 0
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run(task: ConvertTask | AssembleTask) -> ConvertResult:
    return assemble(task) if isinstance(task, AssembleTask) else convert(task)


def shard_pairs(ds: Dataset, source: str, k: int, kind: str, take: int | None) -> list[dict]:
    rows = ds.read_shard(source, k).to_pylist()
    if source == "pairs":
        return attach_images(ds, k, conv.select(rows, kind, take))  # the images live in items: stored once
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
        name = f"train-{task.index:05d}.parquet"
        feats = conv.hf_features(schema, conv.IMAGE_COLUMNS)
        tmp.join(name).write_parquet_atomic(table, {"huggingface": json.dumps(feats)})
        res.rows, res.files = table.num_rows, [name]
    else:
        for rel, data in conv.image_files(pairs).items():
            dest = tmp.join(*rel.split("/"))
            if not dest.exists():  # named by content: another task may have written the same image
                dest.write_bytes_atomic(data)
                res.images += 1
        records = conv.JSON_CONVERTERS[task.fmt](pairs)
        tmp.join(RECORDS, f"{task.index:05d}.json").write_json_atomic(records)
        res.rows = len(records)
    res.seconds = time.perf_counter() - t0
    return res


def assemble(task: AssembleTask) -> ConvertResult:
    """Write the JSON file from the fragments; llava keeps the first record of each item."""
    t0 = time.perf_counter()
    tmp = resolve(task.tmp)
    records, seen = [], set()
    for i in task.fragments:
        for r in tmp.join(RECORDS, f"{i:05d}.json").read_json():
            if task.fmt == "llava":
                if r["id"] in seen:
                    continue
                seen.add(r["id"])
            records.append(r)
    name = conv.JSON_FILES[task.fmt]
    tmp.join(name).write_json_atomic(records)
    tmp.join(RECORDS).delete()
    images = len(tmp.join("images").listdir())
    return ConvertResult(-1, rows=len(records), images=images, files=[name, "images/"],
                         seconds=time.perf_counter() - t0)
