"""The runner: plans a stage over the dataset's shards, schedules one task per shard, commits the results.

Shard k of a stage is computed from shard k of each of its inputs. Its key is a hash of the stage's
config hash and the keys of those input shards, so:
- a shard whose outputs exist with the expected key is skipped (resume, cron refresh);
- changing a stage's config changes its keys and the keys of every stage after it, nothing before;
- a shard with retryable failures (rate limits, timeouts) is run again on the next run.
The driver only plans (from shard footers: keys and row counts), schedules and commits the manifest:
each task reads its inputs and writes its outputs itself (core/shard_task.py), the main output last,
so a killed run leaves either the old state or the new one, never half a shard.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from povid_cli.core import shard_task
from povid_cli.core.errors import PovidError
from povid_cli.core.executors import InlineExecutor, RunOptions  # noqa: F401 - RunOptions: part of the runner's API
from povid_cli.core.runs import record_run
from povid_cli.core.schedule import run_tasks
from povid_cli.core.shard_task import MergeTask, ShardResult, ShardTask, part_bounds
from povid_cli.core.stage import DataView, Stage
from povid_cli.core.lineage import ShardUnreadable
from povid_cli.core.store import Dataset, digest, now_iso

log = logging.getLogger("povid.runner")


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
    rows: int = 0     # rows of the primary input that will be processed


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
    stage.check(DataView(ds, stage.config))
    primary = stage.reads[0]
    for r in stage.reads:
        if not ds.has(r):
            raise PovidError(f"{ds.root.url} has no {r} yet; run the stage that makes it first (see `povid status`)")
    reads = list(stage.reads) + [r for r in stage.optional_reads if ds.has(r)]
    lineages = {r: ds.lineage(r) for r in reads}  # only committed input shards are read (core/lineage.py)
    for r, lin in lineages.items():
        if lin.unreadable:  # never guess around a broken input: name it and the repair
            raise ShardUnreadable(lin.unreadable[min(lin.unreadable)])
    config_hash = stage.config_hash()
    todo, done, waiting = [], [], 0
    remaining = limit
    prev_key = ""
    for k in ds.shard_ids(primary):
        if remaining is not None and remaining <= 0:
            break
        input_keys = {r: lineages[r].committed.get(k) for r in reads}
        if any(input_keys[r] is None for r in stage.reads):
            waiting += 1
            continue
        n = ds.num_rows(primary, k)
        take = None
        if remaining is not None:
            take = min(n, remaining) if n > remaining else None
            remaining -= min(n, remaining)
        key = digest(config_hash, sorted(input_keys.items()), take, prev_key if stage.sequential else "")
        prev_key = key
        p = _Plan(k, key, {r: v for r, v in input_keys.items() if v is not None}, take, n if take is None else take)
        complete = all(ds.shard_key(w, k) == key for w in stage.writes)
        if complete and not _needs_retry(ds, stage, k, key, retry_failed):
            done.append(p)
        else:
            todo.append(p)
    return todo, done, waiting


def _tasks(ds: Dataset, stage: Stage, todo: list[_Plan], slots: int) -> list[ShardTask]:
    """One task per shard; with fewer shards than 2 x slots, shards split into row ranges (parts) so that
    every worker has work, each part at least a batch."""
    ref = shard_task.stage_ref(stage)
    out = []
    for p in todo:
        inputs = tuple([stage.reads[0]] + [r for r in p.input_keys if r != stage.reads[0]])
        bounds = [0, p.rows] if stage.sequential else part_bounds(p.rows, len(todo), slots, stage.batch_size or p.rows)
        n = len(bounds) - 1
        for a, b in zip(bounds, bounds[1:]):
            out.append(ShardTask(ds.root.url, ref, stage.config, p.k, p.key, inputs, a,
                                 b if (n > 1 or p.take is not None) else None, n))
    return out


def run_stage(ds: Dataset, stage: Stage, executor=None, *, limit: int | None = None,
              retry_failed: bool = False, progress=None) -> StageRun:
    """Run `stage` over every shard of `ds` that is not done yet. The caller holds ds.lock()."""
    t0 = time.perf_counter()
    started = now_iso()
    ds.clean_tmp()
    ds.root.join(shard_task.PARTS, stage.name).delete()  # parts of a killed run: recomputed
    todo, done, waiting = plan(ds, stage, limit, retry_failed)
    run = StageRun(stage.name, shards_total=len(todo) + len(done) + waiting, shards_skipped=len(done),
                   shards_waiting=waiting)
    rec = ds.stage_record(stage.name)
    rec.update(config=stage.config_dict(), config_hash=stage.config_hash(), reads=list(stage.reads),
               writes=list(stage.writes))
    rec["input_hash"] = digest(sorted((p.k, sorted(p.input_keys.items())) for p in todo + done))
    shards_rec = rec.setdefault("shards", {})
    for p in done:  # written by a run killed before it committed them: the same key again, so adopt them
        if (shards_rec.get(f"{p.k:05d}") or {}).get("key") != p.key:
            shards_rec[f"{p.k:05d}"] = {"key": p.key, "inputs": p.input_keys,
                                        "rows": {w: ds.num_rows(w, p.k) for w in stage.writes}, "adopted": now_iso()}
    ds.save_manifest()

    remote = getattr(executor, "remote", False)
    if stage.sequential or executor is None or (stage.max_workers == 1 and not remote):
        executor = InlineExecutor()  # on Ray, max_workers=1 stages still go out: one model per actor
    shard_task.register(stage)  # inline tasks use this very instance (sequential stages keep state)

    total_rows = sum(p.rows for p in todo)
    task_id = progress.add_task(stage.name, total=total_rows) if progress is not None and todo else None
    by_k = {p.k: p for p in todo}
    parts: dict[int, list[ShardResult]] = {}

    def finish(k: int, results: list[ShardResult], counts: dict[str, int]) -> None:
        p = by_k[k]
        usage: dict[str, float] = {}
        for r in results:
            for u, v in r.usage.items():
                usage[u] = usage.get(u, 0) + v
        n_in, failed = sum(r.rows_in for r in results), sum(r.failed for r in results)
        run.shards_run += 1
        run.rows_in += n_in
        run.failed += failed
        for w, n in counts.items():
            run.rows_out[w] = run.rows_out.get(w, 0) + n
        for u, v in usage.items():
            run.usage[u] = run.usage.get(u, 0) + v
        shards_rec[f"{k:05d}"] = {"key": p.key, "inputs": p.input_keys, "rows_in": n_in, "rows": counts, "failed": failed,
                                  "retryable": sum(r.retryable for r in results),
                                  "seconds": round(sum(r.seconds for r in results), 3), "usage": usage,
                                  "finished": now_iso()}
        ds.save_manifest()

    def on_result(task, res: ShardResult):
        if isinstance(task, MergeTask):
            finish(task.k, parts.pop(task.k) + [res], res.rows)
            return None
        if task_id is not None:
            progress.advance(task_id, res.rows_in)
        if task.parts == 1:
            finish(task.k, [res], res.rows)
            return None
        got = parts.setdefault(task.k, [])
        got.append(res)
        if len(got) < task.parts:
            return None
        outputs = (f"failed/{stage.name}",) + tuple(reversed(stage.writes))
        return [MergeTask(task.root, stage.name, outputs, task.k, task.key, tuple(sorted(r.part for r in got)))]

    try:
        if stage.sequential:
            done_ks = {p.k for p in done}
            tasks = {t.k: t for t in _tasks(ds, stage, todo, 1)}
            for p in sorted(todo + done, key=lambda p: p.k):
                if p.k in done_ks:
                    names = stage.writes if stage.observes is None else stage.observes
                    stage.observe({w: ds.read_shard(w, p.k).to_pylist() for w in names})
                else:
                    on_result(tasks[p.k], shard_task.run(tasks[p.k]))
        else:
            tasks = _tasks(ds, stage, todo, executor.slots(stage.resources, stage.max_workers))
            run_tasks(executor, shard_task.run, tasks, on_result, resources=stage.resources,
                      max_workers=stage.max_workers)
    finally:
        run.seconds = time.perf_counter() - t0
        record_run(ds, rec, {"started": started, "seconds": round(run.seconds, 3), "shards_run": run.shards_run,
                             "shards_skipped": run.shards_skipped, "shards_waiting": run.shards_waiting,
                             "rows_in": run.rows_in, "rows_out": run.rows_out, "failed": run.failed,
                             "executor": getattr(executor, "name", "inline"),
                             "workers": getattr(executor, "workers", 1), "limit": limit}, run.usage)
    return run


def summarize_failures(ds: Dataset, stage_name: str, limit: int = 3) -> list[str]:
    """A few 'id: error' lines from failed/<stage>, for the CLI's closing message."""
    t = ds.read_all(f"failed/{stage_name}", columns=["id", "error"])
    if t is None:
        return []
    return [f"{r['id'] or '?'}: {r['error']}" for r in t.slice(0, limit).to_pylist()]
