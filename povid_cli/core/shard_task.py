"""One shard of a stage, computed in whichever process the executor picked: read, process, write.

A `ShardTask` says which shard (k), which rows of it, which input shards (by their keys) and which
key its outputs get; the worker reads those inputs itself, runs the stage over them batch by
batch, and writes the outputs and the failed rows under temporary names that are renamed into
place, the main output last (its presence with the key marks the shard done). Only counts, usage
and timings go back to the driver, which commits them to the manifest (core/runner.py).

When there are fewer shards than workers, a shard is split into row ranges (`parts` > 1): each part
is written to DATA/.parts/<stage>/<k>/ and, once every part is back, a `MergeTask` concatenates them
into the shard, in row order, so the result is the same bytes whatever the split.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from povid_cli.core.errors import PovidError, TransientError
from povid_cli.core.stage import FAILED_SCHEMA, Batch, Result, Stage, failure, item_id_of
from povid_cli.core.store import Dataset, digest

PARTS = ".parts"

# Stage instances of this process, so that models and clients are set up once per process.
_STAGES: dict[tuple[str, str], Stage] = {}


def stage_ref(stage: Stage) -> str:
    cls = type(stage)
    return f"{cls.__module__}:{cls.__qualname__}"


def _cache_key(ref: str, config: Any) -> tuple[str, str]:
    return ref, digest(repr(config))


def register(stage: Stage) -> None:
    """Use this instance for tasks of its stage run in this process (inline runs keep its state)."""
    _STAGES[_cache_key(stage_ref(stage), stage.config)] = stage


def instance(ref: str, config: Any) -> Stage:
    key = _cache_key(ref, config)
    stage = _STAGES.get(key)
    if stage is None:
        module, qualname = ref.split(":")
        cls = getattr(importlib.import_module(module), qualname)
        stage = _STAGES[key] = cls(config)
    return stage


@dataclass(frozen=True)
class ShardTask:
    root: str                               # DATA (a path or URL every worker can reach)
    stage: str                              # "module:Class"
    config: Any                             # the stage's frozen config
    k: int
    key: str                                # what the outputs are stamped with
    inputs: tuple[str, ...]                 # outputs read: the primary first, the others joined by item id
    start: int = 0                          # rows [start, stop) of the primary input
    stop: int | None = None
    parts: int = 1                          # > 1: this is one row range of a split shard

    @property
    def part(self) -> str:
        return f"{self.start:09d}-{self.stop if self.stop is not None else 0:09d}"


@dataclass(frozen=True)
class MergeTask:
    """Concatenate the parts of shard k into the shard of each output, written in the order given."""

    root: str
    job: str                                # whose parts: DATA/.parts/<job>/<k>/
    outputs: tuple[str, ...]                # e.g. ("failed/filter", "dropped", "pairs"): the main output last
    k: int
    key: str
    parts: tuple[str, ...]                  # part names, in row order


@dataclass
class ShardResult:
    k: int
    rows_in: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # rows written per output (whole or merged shards)
    failed: int = 0
    retryable: int = 0
    usage: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    part: str | None = None


def run(task: ShardTask | MergeTask) -> ShardResult:
    """The function executors run (top level, so it pickles)."""
    return merge(task) if isinstance(task, MergeTask) else compute(task)


def process_batch(stage: Stage, batch: Batch) -> Result:
    stage.ensure_ready()
    try:
        return stage.process(batch)
    except TransientError as e:
        return Result(failed=[failure(r.get("id"), str(e), kind="transient", retryable=True) for r in batch.rows])
    except PovidError as e:
        # A problem with the setup, not with a row: stop the run (re-raised as a plain PovidError so
        # it pickles across processes whatever the subclass's constructor takes).
        err = PovidError(str(e))
        err.exit_code = e.exit_code
        raise err from None


def _batches(stage: Stage, k: int, rows: list[dict], others: dict[str, list[dict]]) -> list[Batch]:
    size = stage.batch_size or max(1, len(rows))
    out = []
    for i in range(0, max(1, len(rows)), size):
        chunk = rows[i : i + size]
        ids = {r["id"] for r in chunk}
        out.append(Batch(chunk, {n: [x for x in xs if item_id_of(x) in ids] for n, xs in others.items()}, k))
    return out


def compute(task: ShardTask) -> ShardResult:
    t0 = time.perf_counter()
    ds = Dataset.at(task.root)
    stage = instance(task.stage, task.config)
    primary, *secondary = task.inputs
    rows = ds.read_rows(primary, task.k, task.start, task.stop, _columns(ds, stage, primary, task.k)).to_pylist()
    ids = {r["id"] for r in rows}
    others = {n: [x for x in ds.read_shard(n, task.k, _columns(ds, stage, n, task.k)).to_pylist()
                  if item_id_of(x) in ids] for n in secondary}
    result = Result()
    for batch in _batches(stage, task.k, rows, others):
        result.merge(process_batch(stage, batch))
    tables = _tables(stage, result)
    if task.parts == 1:
        counts = write_shard(ds, tables, task.k, task.key)
    else:
        write_part(ds, stage.name, tables, task.k, task.key, task.part)
        counts = {}
    return ShardResult(task.k, len(rows), counts, len(result.failed), sum(1 for f in result.failed if f.get("retryable")),
                       result.usage, time.perf_counter() - t0, task.part if task.parts > 1 else None)


def _columns(ds: Dataset, stage: Stage, output: str, k: int) -> list[str] | None:
    skip = stage.skips(output)
    return [c for c in ds.shard(output, k).parquet_schema().names if c not in skip] if skip else None


def _tables(stage: Stage, result: Result) -> list[tuple[str, pa.Table]]:
    """The result as (output, table) in write order: failed rows first, the main output (writes[0]) last."""
    failed = pa.Table.from_pylist([{**f, "stage": stage.name} for f in result.failed], schema=FAILED_SCHEMA)
    outputs = {(w if w else stage.writes[0]): rows for w, rows in result.outputs.items()}
    tables = [(f"failed/{stage.name}", failed)]
    for w in reversed(stage.writes):
        try:
            tables.append((w, pa.Table.from_pylist(outputs.get(w, []), schema=stage.schemas[w])))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
            raise PovidError(f"{stage.name} produced rows that do not fit the {w} schema: {e}") from e
    return tables


def write_shard(ds: Dataset, tables: list[tuple[str, pa.Table]], k: int, key: str) -> dict[str, int]:
    """Write shard k of each output atomically, in the order given; an empty failed/* shard is removed
    instead (a re-run that fixed every row leaves no stale failures)."""
    counts = {}
    for output, table in tables:
        if output.startswith("failed/"):
            if table.num_rows:
                ds.write_shard(output, k, table, key)
            elif ds.shard(output, k).exists():
                ds.shard(output, k).delete()
            continue
        ds.write_shard(output, k, table, key)
        counts[output] = table.num_rows
    return counts


def _part_file(ds: Dataset, job: str, k: int, output: str, part: str):
    return ds.root.join(PARTS, job, f"{k:05d}", f"{output.replace('/', '~')}@{part}.arrow")


def write_part(ds: Dataset, job: str, tables: list[tuple[str, pa.Table]], k: int, key: str, part: str) -> None:
    """Parts are Arrow IPC: writing one is a copy and merging reads it through a memory map, so a split
    shard costs about one Parquet write, like a whole one."""
    for output, table in tables:
        _part_file(ds, job, k, output, part).write_ipc_atomic(table)


def part_bounds(rows: int, n_shards: int, slots: int, min_rows: int) -> list[int]:
    """Row boundaries of one shard's parts: one part when there are enough shards to keep every slot
    busy (2 tasks per slot), else enough parts for that, none smaller than `min_rows`."""
    n = 1
    if n_shards < 2 * slots:
        n = max(1, min(-(-2 * slots // max(1, n_shards)), rows // max(1, min_rows)))
    return [round(i * rows / n) for i in range(n + 1)]


def merge(task: MergeTask) -> ShardResult:
    t0 = time.perf_counter()
    ds = Dataset.at(task.root)
    tables = []
    for output in task.outputs:
        parts = [_part_file(ds, task.job, task.k, output, p).read_ipc() for p in task.parts]
        tables.append((output, pa.concat_tables(parts).replace_schema_metadata(parts[0].schema.metadata)))
    counts = write_shard(ds, tables, task.k, task.key)
    ds.root.join(PARTS, task.job, f"{task.k:05d}").delete()
    return ShardResult(task.k, rows=counts, seconds=time.perf_counter() - t0)
