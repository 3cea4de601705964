"""The ingest job: sources -> new `items` shards, planned here, computed by the executor's workers.

1. Read every SRC into records (annotation files and folder listings only: no image bytes here).
2. Hash each record's image in the workers (`HashTask`): the item id needs it.
3. Drop records whose id is already in `items` (re-ingesting a folder adds only what is new).
4. Cut the new records into shards of `shard_size`, numbered after the last existing shard; each
   shard (or row range of it, when there are fewer shards than workers) is an `ItemsTask` that reads,
   normalises and writes its images itself.
5. Records that fail (bad JSON, missing or broken image, a path outside the image root) go to
   `failed/ingest/` with a reason; a later run that reads their source again replaces them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from povid_cli.core.errors import PovidError
from povid_cli.core.runs import record_run
from povid_cli.core.schedule import run_tasks
from povid_cli.core.shard_task import PARTS, MergeTask, ShardResult, part_bounds
from povid_cli.core.shard_task import run as run_merge
from povid_cli.core.stage import FAILED_SCHEMA, failure
from povid_cli.core.store import Dataset, digest, now_iso
from povid_cli.ingest import tasks as T
from povid_cli.ingest.normalise import IngestConfig, item_id
from povid_cli.ingest.sources import Record, collect_instances, read_source

HASH_BATCH = 64
MIN_PART = 32  # rows: smaller parts cost more in task overhead than they save


@dataclass
class IngestRun:
    scanned: int = 0
    new: int = 0
    already: int = 0  # ids already in items (or twice in this run)
    failed: int = 0
    shards: list[int] = field(default_factory=list)
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)

    def line(self) -> str:
        s = (f"ingest: {self.scanned} records scanned -> {self.new} new items in {len(self.shards)} shard(s), "
             f"{self.already} already present")
        if self.failed:
            s += f", {self.failed} failed"
        return s + f"; {self.seconds:.1f}s"


def _detail(rec: Record) -> str:
    return json.dumps({"source": rec.source, "source_id": rec.source_id, "image": rec.image_name, "turn": rec.turn})


def _task_record(rec: Record) -> dict:
    d = asdict(rec)
    d.pop("extra", None)
    return d


def _work(task):
    """What the executor runs: ingest's own tasks, or merging the parts of a shard."""
    return run_merge(task) if isinstance(task, MergeTask) else T.run(task)


def ingest(ds: Dataset, sources: list[str], config: IngestConfig, executor, *, limit: int | None = None,
           progress=None) -> IngestRun:
    """Add the new records of `sources` to `ds` (the caller holds ds.lock())."""
    t0 = time.perf_counter()
    started = now_iso()
    run = IngestRun()
    ds.clean_tmp()
    ds.root.join(PARTS, T.JOB).delete()  # parts of a killed run
    instances: dict[str, list[str]] = {}
    for src in sources:
        instances.update(collect_instances(src) or {})
    settle_items(ds)
    existing = ds.read_all("items", columns=["id"])
    seen = set(existing.column("id").to_pylist()) if existing is not None else set()

    failures: list[dict] = []
    records: list[Record] = []
    for src in sources:
        for rec in read_source(src, config.image_root, config.prompt, instances):
            run.scanned += 1
            if rec.error:
                failures.append(failure(None, f"{rec.source}{'#' + rec.source_id if rec.source_id else ''}: {rec.error}",
                                        kind=rec.error_kind, detail=_detail(rec)))
            else:
                records.append(rec)
    try:
        shas = _hash(records, executor, progress)
        candidates: list[tuple[Record, str, str]] = []
        for i, rec in enumerate(records):
            sha, err = shas[i]
            if err:
                failures.append(failure(None, f"{rec.image_name}: {err}", kind="missing_image", detail=_detail(rec)))
                continue
            iid = item_id(sha, rec.prompt)
            if iid in seen:
                run.already += 1
                continue
            seen.add(iid)
            candidates.append((rec, sha, iid))
        if limit is not None:
            candidates = candidates[:limit]
        _write(ds, candidates, config, executor, progress, run, failures)
    finally:
        _write_failures(ds, failures, sources)
        run.failed = len(failures)
        run.failures = failures
        run.seconds = time.perf_counter() - t0
        rec = ds.stage_record("ingest")
        rec.update(config=asdict(config), sources=sorted(set(rec.get("sources", [])) | set(sources)))
        record_run(ds, rec, {"started": started, "seconds": round(run.seconds, 3), "scanned": run.scanned,
                             "new": run.new, "already": run.already, "failed": run.failed, "shards": run.shards,
                             "limit": limit})
    return run


def _hash(records: list[Record], executor, progress) -> list[tuple[str | None, str | None]]:
    """(sha256, error) per record, computed by the workers."""
    out: list = [None] * len(records)
    tasks = [T.HashTask(tuple({"i": i, "image_path": r.image_path, "image_ref": r.image_ref}
                              for i, r in enumerate(records[a : a + HASH_BATCH], start=a)))
             for a in range(0, len(records), HASH_BATCH)]
    task_id = progress.add_task("hash", total=len(records)) if progress is not None and records else None

    def done(task, result):
        for i, sha, err in result:
            out[i] = (sha, err)
        if task_id is not None:
            progress.advance(task_id, len(result))

    run_tasks(executor, _work, tasks, done)
    return out


def _write(ds: Dataset, candidates: list, config: IngestConfig, executor, progress, run: IngestRun,
           failures: list[dict]) -> None:
    start = max(ds.shard_ids("items"), default=-1) + 1
    size = max(1, config.shard_size)
    chunks = [candidates[i : i + size] for i in range(0, len(candidates), size)]
    task_id = progress.add_task("ingest", total=len(candidates)) if progress is not None and candidates else None
    shards_rec = ds.stage_record("ingest").setdefault("shards", {})
    slots = executor.slots()
    tasks, n_parts, keys = [], {}, {}
    for c, chunk in enumerate(chunks):
        k = start + c
        recs = [{**_task_record(r), "id": iid, "image_sha256": sha} for r, sha, iid in chunk]
        key = keys[k] = digest(sorted(iid for _, _, iid in chunk))
        bounds = part_bounds(len(recs), len(chunks), slots, MIN_PART)
        n_parts[k] = len(bounds) - 1
        for a, b in zip(bounds, bounds[1:]):
            tasks.append(T.ItemsTask(ds.root.url, k, key, tuple(recs[a:b]), config,
                                     f"{a:09d}-{b:09d}" if n_parts[k] > 1 else None))
    parts: dict[int, list] = {}

    def commit(k: int, rows: int, failed: int) -> None:
        if not rows and ds.shard("items", k).exists():
            ds.shard("items", k).delete()  # every record of the shard failed: no empty shard
        if rows:
            shards_rec[f"{k:05d}"] = {"key": keys[k], "rows": {"items": rows}, "failed": failed, "finished": now_iso()}
            run.shards.append(k)
            run.new += rows
        ds.save_manifest()

    def done(task, result):
        if isinstance(task, MergeTask):
            got = parts.pop(task.k)
            commit(task.k, sum(r.rows for r in got), sum(len(r.failures) for r in got))
            return None
        failures.extend(result.failures)
        if task_id is not None:
            progress.advance(task_id, len(task.records))
        if result.part is None:
            commit(task.k, result.rows, len(result.failures))
            return None
        got = parts.setdefault(task.k, [])
        got.append(result)
        if len(got) < n_parts[task.k]:
            return None
        return [MergeTask(task.root, T.JOB, ("items",), task.k, task.key, tuple(sorted(r.part for r in got)))]

    run_tasks(executor, _work, tasks, done)
    run.shards.sort()


def settle_items(ds: Dataset) -> None:
    """Before reading what is there: an items shard that cannot be read goes to DATA/quarantine/ (its
    records are ingested again, as new), and one that was written but never committed (a run killed in
    between) is adopted when its key is the digest of its ids, as ingest writes it, and none of its ids is
    committed already (a copied shard is left out)."""
    lin = ds.lineage("items")
    rec = ds.stage_record("ingest").setdefault("shards", {})
    for k in lin.unreadable:
        src = ds.shard("items", k)
        dest = ds.root.join("quarantine", "items", f"part-{k:05d}.parquet")
        dest.parent().makedirs()
        src.fs.move(src.path, dest.path)
        rec.pop(f"{k:05d}", None)
    seen = {i for k in lin.committed for i in ds.read_shard("items", k, columns=["id"]).column("id").to_pylist()}
    for k in sorted(lin.stale):
        key = ds.shard_key("items", k)
        ids = ds.read_shard("items", k, columns=["id"]).column("id").to_pylist()
        if key is not None and key == digest(sorted(ids)) and not seen & set(ids):  # a copy adds nothing
            rec[f"{k:05d}"] = {"key": key, "rows": {"items": len(ids)}, "adopted": now_iso()}
            seen.update(ids)
    if lin.unreadable or lin.stale:
        ds.save_manifest()


def _write_failures(ds: Dataset, failures: list[dict], sources: list[str]) -> None:
    """failed/ingest holds the current failures: this run's, plus earlier ones from sources not read again.

    A source read again replaces all its earlier failures (a fixed file, or one deleted from a folder,
    leaves failed/ingest)."""
    roots = [os.path.abspath(os.path.expanduser(s.removeprefix("file://"))) for s in sources]

    def read_again(row: dict) -> bool:
        try:
            src = json.loads(row.get("detail") or "{}").get("source")
        except ValueError:
            return False
        return bool(src) and any(src == r or src.startswith(r.rstrip(os.sep) + os.sep) for r in roots)

    prev = ds.read_all("failed/ingest")
    kept = [r for r in (prev.to_pylist() if prev is not None else []) if not read_again(r)]
    rows = kept + [{**f, "stage": "ingest"} for f in failures]
    loc = ds.shard("failed/ingest", 0)
    if rows:
        ds.write_shard("failed/ingest", 0, pa.Table.from_pylist(rows, schema=FAILED_SCHEMA), digest(len(rows)))
    elif loc.exists():
        loc.delete()


def run_ingest(output: str, sources: list[str], config: IngestConfig, *, workers: int | None = None,
               limit: int | None = None, progress=None) -> tuple[Dataset, IngestRun]:
    """`povid ingest`: DATA created if missing, its lock held, the images read by local workers."""
    from povid_cli.core.executors import make_executor

    check_sources(sources)
    ds = Dataset.open_or_create(output)
    with ds.lock():
        ex = make_executor("local", workers)
        try:
            run = ingest(ds, sources, config, ex, limit=limit, progress=progress)
        except BaseException:
            ex.terminate()
            raise
        ex.close()
    return ds, run


def check_sources(sources: list[str]) -> None:
    if not sources:
        raise PovidError("give at least one SRC: an image folder, a LLaVA/POVID/COCO JSON file or a TRL Parquet file")


__all__ = ["IngestRun", "ingest", "check_sources", "ShardResult"]
