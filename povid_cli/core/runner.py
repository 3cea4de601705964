"""The runner: plans a stage over the dataset's shards, runs the batches, writes the results.

Shard k of a stage is computed from shard k of each of its inputs. Its key is a hash of the stage's
config hash and the keys of those input shards, so:
- a shard whose outputs exist with the expected key is skipped (resume, cron refresh);
- changing a stage's config changes its keys and the keys of every stage after it, nothing before;
- a shard with retryable failures (rate limits, timeouts) is run again on the next run.
Outputs are written to a temporary name and renamed; the main output is written last, so a killed
run leaves either the old state or the new one, never half a shard.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from povid_cli.core.errors import PovidError, TransientError
from povid_cli.core.stage import FAILED_SCHEMA, Batch, Result, Stage, failure, item_id_of
from povid_cli.core.store import Dataset, digest, now_iso

log = logging.getLogger("povid.runner")

# Stage instances per worker process, so that models and clients are set up once per process.
_STAGES: dict[tuple[str, str], Stage] = {}


def _stage_ref(stage: Stage) -> str:
    cls = type(stage)
    return f"{cls.__module__}:{cls.__qualname__}"


def _cache_key(ref: str, config: Any) -> tuple[str, str]:
    return ref, digest(repr(config))


def process_batch(ref: str, config: Any, batch: Batch) -> Result:
    """Run one batch through a stage (in a worker process or inline)."""
    key = _cache_key(ref, config)
    stage = _STAGES.get(key)
    if stage is None:
        module, qualname = ref.split(":")
        cls = getattr(importlib.import_module(module), qualname)
        stage = _STAGES[key] = cls(config)
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


@dataclass
class StageRun:
    """What one run of a stage did (shown by the CLI, recorded in the manifest)."""

    stage: str
    shards_total: int = 0
    shards_skipped: int = 0
    shards_run: int = 0
    shards_waiting: int = 0  # inputs not ready (an upstream stage has not produced the shard)
    rows_in: int = 0
    rows_out: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    seconds: float = 0.0
    usage: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        outs = ", ".join(f"{n} {k}" for k, n in self.rows_out.items())
        parts = [f"{self.stage}: {self.rows_in} rows in -> {outs or 'nothing new'}"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(f"{self.shards_run} shard(s) run, {self.shards_skipped} already done")
        if self.shards_waiting:
            parts.append(f"{self.shards_waiting} waiting for inputs")
        parts.append(f"{self.seconds:.1f}s")
        return "; ".join(parts)


@dataclass
class _Plan:
    k: int
    key: str
    input_keys: dict[str, str]
    take: int | None  # rows of the primary input to process (None: all)


def _num_rows(ds: Dataset, output: str, k: int) -> int:
    loc = ds.shard(output, k)
    with loc.fs.open_input_file(loc.path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def _needs_retry(ds: Dataset, stage: Stage, k: int, key: str, retry_failed: bool) -> bool:
    name = f"failed/{stage.name}"
    if ds.shard_key(name, k) != key:
        return False
    t = ds.read_shard(name, k, columns=["retryable"])
    if retry_failed:
        return t.num_rows > 0
    return any(t.column("retryable").to_pylist())


def plan(ds: Dataset, stage: Stage, limit: int | None = None, retry_failed: bool = False) -> tuple[list[_Plan], list[_Plan], int]:
    """(to run, already done, waiting) for every shard of the stage's primary input."""
    primary = stage.reads[0]
    for r in stage.reads:
        if not ds.has(r):
            raise PovidError(f"{ds.root.url} has no {r} yet; run the stage that makes it first (see `povid status`)")
    reads = list(stage.reads) + [r for r in stage.optional_reads if ds.has(r)]
    config_hash = stage.config_hash()
    todo, done, waiting = [], [], 0
    remaining = limit
    prev_key = ""
    for k in ds.shard_ids(primary):
        if remaining is not None and remaining <= 0:
            break
        input_keys = {r: ds.shard_key(r, k) for r in reads}
        if any(input_keys[r] is None for r in stage.reads):
            waiting += 1
            continue
        take = None
        if remaining is not None:
            n = _num_rows(ds, primary, k)
            take = min(n, remaining) if n > remaining else None
            remaining -= min(n, remaining)
        key = digest(config_hash, sorted(input_keys.items()), take, prev_key if stage.sequential else "")
        prev_key = key
        p = _Plan(k, key, {r: v for r, v in input_keys.items() if v is not None}, take)
        complete = all(ds.shard_key(w, k) == key for w in stage.writes)
        if complete and not _needs_retry(ds, stage, k, key, retry_failed):
            done.append(p)
        else:
            todo.append(p)
    return todo, done, waiting


def _read_inputs(ds: Dataset, stage: Stage, p: _Plan) -> tuple[list[dict], dict[str, list[dict]]]:
    primary = stage.reads[0]
    rows = ds.read_shard(primary, p.k).to_pylist()
    if p.take is not None:
        rows = rows[: p.take]
    ids = {r["id"] for r in rows}
    others = {}
    for r in p.input_keys:
        if r == primary:
            continue
        others[r] = [x for x in ds.read_shard(r, p.k).to_pylist() if item_id_of(x) in ids]
    return rows, others


def _batches(stage: Stage, p: _Plan, rows: list[dict], others: dict[str, list[dict]]) -> list[Batch]:
    size = stage.batch_size or max(1, len(rows))
    out = []
    for i in range(0, max(1, len(rows)), size):
        chunk = rows[i : i + size]
        ids = {r["id"] for r in chunk}
        out.append(Batch(chunk, {n: [x for x in xs if item_id_of(x) in ids] for n, xs in others.items()}, p.k))
    return out


def _write(ds: Dataset, stage: Stage, p: _Plan, result: Result) -> dict[str, int]:
    fname = f"failed/{stage.name}"
    if result.failed:
        rows = [{**f, "stage": stage.name} for f in result.failed]
        ds.write_shard(fname, p.k, pa.Table.from_pylist(rows, schema=FAILED_SCHEMA), p.key)
    elif ds.shard(fname, p.k).exists():
        ds.shard(fname, p.k).delete()
    counts = {}
    outputs = {(w if w else stage.writes[0]): rows for w, rows in result.outputs.items()}
    for w in reversed(stage.writes):  # the main output last: its presence marks the shard done
        rows = outputs.get(w, [])
        try:
            table = pa.Table.from_pylist(rows, schema=stage.schemas[w])
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
            raise PovidError(f"{stage.name} produced rows that do not fit the {w} schema: {e}") from e
        ds.write_shard(w, p.k, table, p.key)
        counts[w] = table.num_rows
    return counts


def run_stage(ds: Dataset, stage: Stage, executor=None, *, limit: int | None = None,
              retry_failed: bool = False, progress=None) -> StageRun:
    """Run `stage` over every shard of `ds` that is not done yet. The caller holds ds.lock()."""
    from povid_cli.core.executors import InlineExecutor

    t0 = time.perf_counter()
    started = now_iso()
    ds.clean_tmp()
    todo, done, waiting = plan(ds, stage, limit, retry_failed)
    run = StageRun(stage.name, shards_total=len(todo) + len(done) + waiting, shards_skipped=len(done),
                   shards_waiting=waiting)
    rec = ds.stage_record(stage.name)
    rec.update(config=stage.config_dict(), config_hash=stage.config_hash(), reads=list(stage.reads),
               writes=list(stage.writes))
    rec["input_hash"] = digest(sorted((p.k, sorted(p.input_keys.items())) for p in todo + done))
    shards_rec = rec.setdefault("shards", {})

    remote = getattr(executor, "remote", False)
    if stage.sequential or executor is None or (stage.max_workers == 1 and not remote):
        executor = InlineExecutor()  # on Ray, max_workers=1 stages still go out: one model per actor
    ref = _stage_ref(stage)
    _STAGES[_cache_key(ref, stage.config)] = stage  # inline runs reuse this instance

    total_rows = sum(p.take if p.take is not None else _num_rows(ds, stage.reads[0], p.k) for p in todo)
    task_id = progress.add_task(stage.name, total=total_rows) if progress is not None and todo else None

    def finish(p: _Plan, result: Result, n_in: int, seconds: float) -> None:
        counts = _write(ds, stage, p, result)
        run.shards_run += 1
        run.rows_in += n_in
        run.failed += len(result.failed)
        for w, n in counts.items():
            run.rows_out[w] = run.rows_out.get(w, 0) + n
        for u, v in result.usage.items():
            run.usage[u] = run.usage.get(u, 0) + v
        shards_rec[f"{p.k:05d}"] = {"key": p.key, "rows_in": n_in, "rows": counts, "failed": len(result.failed),
                                    "retryable": sum(1 for f in result.failed if f.get("retryable")),
                                    "seconds": round(seconds, 3), "usage": result.usage, "finished": now_iso()}
        ds.save_manifest()

    try:
        if stage.sequential:
            done_ks = {p.k for p in done}
            for p in sorted(todo + done, key=lambda p: p.k):
                if p.k in done_ks:
                    stage.observe({w: ds.read_shard(w, p.k).to_pylist() for w in stage.writes})
                    continue
                ts = time.perf_counter()
                rows, others = _read_inputs(ds, stage, p)
                result = Result()
                for b in _batches(stage, p, rows, others):
                    result.merge(process_batch(ref, stage.config, b))
                    if task_id is not None:
                        progress.advance(task_id, len(b.rows))
                finish(p, result, len(rows), time.perf_counter() - ts)
        else:
            _run_parallel(ds, stage, ref, todo, executor, progress, task_id, finish)
    finally:
        run.seconds = time.perf_counter() - t0
        usage_total = rec.setdefault("usage", {})
        for u, v in run.usage.items():
            usage_total[u] = usage_total.get(u, 0) + v
        last = {"started": started, "seconds": round(run.seconds, 3), "shards_run": run.shards_run,
                "shards_skipped": run.shards_skipped, "shards_waiting": run.shards_waiting,
                "rows_in": run.rows_in, "rows_out": run.rows_out, "failed": run.failed,
                "executor": getattr(executor, "name", "inline"), "workers": getattr(executor, "workers", 1),
                "limit": limit}
        rec["last_run"] = last
        rec.setdefault("runs", []).append(last)
        rec["runs"] = rec["runs"][-50:]
        ds.save_manifest()
    return run


def _run_parallel(ds, stage, ref, todo, executor, progress, task_id, finish) -> None:
    """Feed the batches of every todo shard to the executor; write each shard once all its batches are back."""
    state: dict[int, dict] = {}
    by_k = {p.k: p for p in todo}

    def tasks():
        for p in todo:
            ts = time.perf_counter()
            rows, others = _read_inputs(ds, stage, p)
            batches = _batches(stage, p, rows, others)
            state[p.k] = {"n": len(batches), "parts": {}, "rows": len(rows), "t0": ts}
            for i, b in enumerate(batches):
                yield (p.k, i, len(b.rows)), (ref, stage.config, b)

    extra = {"max_workers": stage.max_workers} if getattr(executor, "remote", False) else {}
    for (k, i, n_rows), result in executor.imap_unordered(process_batch, tasks(), stage.resources, **extra):
        st = state[k]
        st["parts"][i] = result
        if task_id is not None:
            progress.advance(task_id, n_rows)
        if len(st["parts"]) == st["n"]:
            merged = Result()
            for j in range(st["n"]):
                merged.merge(st["parts"][j])
            finish(by_k[k], merged, st["rows"], time.perf_counter() - st["t0"])
            del state[k]


def summarize_failures(ds: Dataset, stage_name: str, limit: int = 3) -> list[str]:
    """A few 'id: error' lines from failed/<stage>, for the CLI's closing message."""
    t = ds.read_all(f"failed/{stage_name}", columns=["id", "error"])
    if t is None:
        return []
    return [f"{r['id'] or '?'}: {r['error']}" for r in t.slice(0, limit).to_pylist()]
