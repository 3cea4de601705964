"""The ingest job: sources -> new `items` shards and their given pairs, planned here, computed by the workers.

1. Read every SRC into records (annotation text and folder listings only: no image bytes here).
2. Hash each distinct image in the workers (`HashTask`): item ids need them.
3. Each record's item id (its images, prompt and chosen answer): an item already in DATA gets the
   record's new given pairs (`GivenTask` on its shard of `given`); records of one new item are merged
   (all their given pairs kept); the rest are new items.
4. New items are cut into shards of `shard_size`, numbered after the last existing shard; each shard
   (or row range of it, when there are fewer shards than workers) is an `ItemsTask` that reads,
   normalises and writes its images and given pairs itself.
5. Records that fail go to `failed/ingest/` with a reason; a later run that reads their SRC again
   replaces them. Skipped records are counted by reason (povid_cli/ingest/accounting.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from povid_cli.core.errors import PovidError
from povid_cli.core.executors import InlineExecutor
from povid_cli.core.fs import resolve
from povid_cli.core.runs import record_run
from povid_cli.core.schedule import run_tasks
from povid_cli.core.shard_task import PARTS, MergeTask, part_bounds
from povid_cli.core.shard_task import run as run_merge
from povid_cli.core.stage import pair_id
from povid_cli.core.store import FORMAT_VERSION, Dataset, digest, now_iso
from povid_cli.ingest import tasks as T
from povid_cli.ingest.file_cache import FileCache, stat
from povid_cli.ingest.accounting import IngestRun, Tally, record_failure, save_accounting, write_failures
from povid_cli.ingest.normalise import IngestConfig, item_id
from povid_cli.ingest.record import SKIP_REASONS, Record
from povid_cli.ingest.sources import read_source, side_data

HASH_BATCH = 64
MIN_PART = 32  # rows: smaller parts cost more in task overhead than they save


def _work(task):
    """What the executor runs: ingest's own tasks, or merging the parts of a shard."""
    return run_merge(task) if isinstance(task, MergeTask) else T.run(task)


def check_format(ds: Dataset) -> None:
    """Refuse to add to a dataset whose item ids were computed another way: it would be duplicated."""
    version = ds.manifest.get("format_version", 1)
    if version < FORMAT_VERSION and ds.has("items"):
        raise PovidError(
            f"{ds.root.url} was made by an older povid (dataset format {version}: item ids from image + prompt; "
            f"this povid writes format {FORMAT_VERSION}); ingesting into it would duplicate its items. Ingest into a "
            "new folder (povid ingest SRC... -o NEW_DATA); the old one stays readable by status, export and train")
    if version > FORMAT_VERSION:
        raise PovidError(f"{ds.root.url} was made by a newer povid (dataset format {version}); upgrade povid")
    if version != FORMAT_VERSION:
        ds.manifest["format_version"] = FORMAT_VERSION  # an empty older dataset: nothing to migrate


def ingest(ds: Dataset, sources: list[str], config: IngestConfig, executor, *, limit: int | None = None,
           progress=None) -> IngestRun:
    """Add the new records of `sources` to `ds` (the caller holds ds.lock())."""
    t0 = time.perf_counter()
    started = now_iso()
    check_format(ds)
    run = IngestRun()
    ds.clean_tmp()
    ds.root.join(PARTS, T.JOB).delete()  # parts of a killed run
    settle_items(ds)
    items_ks = set(ds.committed_shards("items"))  # only committed shards count (core/lineage.py)
    for k in set(ds.shard_ids("given")) - set(ds.shard_ids("items")):  # a killed run's given shard without items
        ds.shard("given", k).delete()
    if any(resolve(s).process_local for s in sources) or ds.root.process_local:
        executor = InlineExecutor()  # an in-memory filesystem is not shared with worker processes
    where: dict[str, int] = {}
    for k in sorted(items_ks):
        for i in ds.read_shard("items", k, columns=["id"]).column("id").to_pylist():
            where[i] = k
    pair_ids = set()
    for k in ds.committed_shards("given"):
        pair_ids.update(ds.read_shard("given", k, columns=["id"]).column("id").to_pylist())

    srcs = [resolve(s).url for s in sources]
    records: list[Record] = []
    side, docs = side_data(sources)
    for src, key in zip(sources, srcs):
        tally = run.by_src.setdefault(key, Tally())
        for rec in read_source(src, config, side, docs):
            rec.src = key
            tally.records += 1
            if rec.error:
                run.failures.append(record_failure(rec))
                tally.failed += 1
            elif rec.skip and config.strict:
                run.failures.append(record_failure(rec, f"skipped with --strict: {SKIP_REASONS[rec.skip]}", rec.skip))
                tally.failed += 1
            elif rec.skip:
                tally.skip(rec.skip)
            else:
                records.append(rec)
    del docs
    try:
        shas = _hash(ds, records, executor, progress)
        new, members, late = _plan(run, records, shas, where, pair_ids)
        taken = list(new.values())
        if limit is not None:
            for it in taken[limit:]:
                for rec in members[it["id"]]:
                    run.by_src[rec.src].limited += 1
            taken = taken[:limit]
        _write(ds, taken, members, late, config, executor, progress, run)
    finally:
        run.total()
        write_failures(ds, run.failures, srcs)
        run.seconds = time.perf_counter() - t0
        rec = ds.stage_record("ingest")
        rec.update(config=asdict(config), sources=sorted(set(rec.get("sources", [])) | set(srcs)),
                   writes=["items"] + (["given"] if ds.has("given") else []))
        save_accounting(ds, run)
        t = run.tally
        record_run(ds, rec, {"started": started, "seconds": round(run.seconds, 3), "records": t.records,
                             "scanned": t.records, "new": t.new, "already": t.present, "pairs": t.pairs,
                             "pairs_new": t.pairs_new, "skipped": t.skipped, "failed": t.failed,
                             "limited": t.limited, "shards": run.shards, "limit": limit})
    return run


def _hash(ds: Dataset, records: list[Record], executor, progress) -> dict[tuple, tuple[str | None, str | None]]:
    """ref -> (sha256, error) for every distinct image of the records, computed by the workers; a local file
    unchanged since an earlier run (same size and mtime: ingest/file_cache.py) is not read again."""
    cache = FileCache(ds)
    out: dict = {}
    stats: dict[tuple, tuple[int, int] | None] = {}
    refs = []
    for ref in dict.fromkeys(r for rec in records for r in rec.images):
        if ref[0] == "file":
            stats[ref] = stat(ref[1])
            sha = cache.get(ref[1], stats[ref])
            if sha is not None:
                out[ref] = (sha, None)
                continue
        refs.append(ref)
    tasks = [T.HashTask(tuple(refs[a : a + HASH_BATCH])) for a in range(0, len(refs), HASH_BATCH)]
    task_id = progress.add_task("hash", total=len(refs)) if progress is not None and refs else None

    def done(task, result):
        for ref, sha, err in result:
            out[ref] = (sha, err)
            if sha is not None and ref in stats:
                cache.put(ref[1], stats[ref], sha)
        if task_id is not None:
            progress.advance(task_id, len(result))

    run_tasks(executor, _work, tasks, done)
    cache.save()
    return out


def _plan(run: IngestRun, records: list[Record], shas: dict, where: dict[str, int], pair_ids: set):
    """(new items by id, their records by id, given pairs for items already in DATA by shard)."""
    new: dict[str, dict] = {}
    members: dict[str, list[Record]] = {}
    late: dict[int, list[dict]] = {}
    for rec in records:
        tally = run.by_src[rec.src]
        errors = [(n, shas[r][1]) for r, n in zip(rec.images, rec.image_names) if shas[r][1]]
        if errors:
            name, err = errors[0]
            run.failures.append(record_failure(rec, f"{name + ': ' if name else ''}{err}", "missing_image"))
            tally.failed += 1
            continue
        ids = [shas[r][0] for r in rec.images]
        iid = item_id(ids, rec.prompt, rec.chosen)
        given = [{"id": pair_id(iid, "text", None, text), "item_id": iid, "rejected": text, "model": model,
                  "source": rec.source, "source_id": rec.source_id} for text, model in rec.rejected]
        if iid in where:
            tally.present += 1
            tally.pairs += len(given)
            for g in given:
                if g["id"] not in pair_ids:
                    pair_ids.add(g["id"])
                    late.setdefault(where[iid], []).append(g)
                    tally.pairs_new += 1
            continue
        if iid in new:
            members[iid].append(rec)
            item = new[iid]
        else:
            members[iid] = [rec]
            item = new[iid] = {
                "id": iid, "refs": list(rec.images), "shas": ids, "names": list(rec.image_names), "prompt": rec.prompt,
                "chosen": rec.chosen, "has_answer": rec.has_answer, "task": rec.task, "objects": rec.objects,
                "boxes": rec.boxes, "box_size": rec.box_size, "source": rec.source, "source_id": rec.source_id,
                "turn": rec.turn, "given": []}
        for g in given:
            if g["id"] not in pair_ids:
                pair_ids.add(g["id"])
                item["given"].append(g)
        item.setdefault("_pairs", []).append(len(given))
    return new, members, late


def _write(ds: Dataset, items: list[dict], members: dict, late: dict[int, list[dict]], config: IngestConfig,
           executor, progress, run: IngestRun) -> None:
    start = max(ds.shard_ids("items"), default=-1) + 1
    size = max(1, config.shard_size)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    task_id = progress.add_task("ingest", total=len(items)) if progress is not None and items else None
    shards_rec = ds.stage_record("ingest").setdefault("shards", {})
    slots = executor.slots()
    tasks: list = [T.GivenTask(ds.root.url, k, tuple(rows)) for k, rows in sorted(late.items())]
    n_parts: dict[int, int] = {}
    outputs: dict[int, tuple] = {}
    by_id = {it["id"]: it for it in items}
    for c, chunk in enumerate(chunks):
        k = start + c
        with_given = any(it["given"] for it in chunk)
        outputs[k] = ("given", "items") if with_given else ("items",)
        key = digest(sorted(it["id"] for it in chunk))
        bounds = part_bounds(len(chunk), len(chunks), slots, MIN_PART)
        n_parts[k] = len(bounds) - 1
        for a, b in zip(bounds, bounds[1:]):
            part = tuple({x: v for x, v in it.items() if x != "_pairs"} for it in chunk[a:b])
            tasks.append(T.ItemsTask(ds.root.url, k, key, part, config, with_given,
                                     f"{a:09d}-{b:09d}" if n_parts[k] > 1 else None))
    parts: dict[int, list] = {}

    def settle(task: T.ItemsTask, result: T.ItemsResult) -> None:
        """What each record of the task's items became: new, already present (merged), or failed."""
        failed = {f[0] for f in result.failed}
        for iid, err, kind, retryable in result.failed:
            for rec in members[iid]:
                run.failures.append(record_failure(rec, err, kind, retryable))
                run.by_src[rec.src].failed += 1
        for iid in (it["id"] for it in task.items if it["id"] not in failed):
            recs, it = members[iid], by_id[iid]
            run.by_src[recs[0].src].new += 1
            for rec in recs[1:]:
                run.by_src[rec.src].present += 1
            for rec, n in zip(recs, it["_pairs"]):
                run.by_src[rec.src].pairs += n
            for g in it["given"]:
                run.by_src[_src_of(recs, g)].pairs_new += 1

    def commit(k: int, key: str, rows: int, pairs: int, failed: int) -> None:
        if not rows:
            for out in ("items", "given"):  # every record of the shard failed: no empty shard
                if out in outputs[k] and ds.shard(out, k).exists():
                    ds.shard(out, k).delete()
        else:
            keys = {o: key for o in outputs[k]}
            shards_rec[f"{k:05d}"] = {"key": key, "keys": keys, "rows": {"items": rows, "given": pairs},
                                      "failed": failed, "finished": now_iso()}
            run.shards.append(k)
        ds.save_manifest()

    def done(task, result):
        if isinstance(task, T.GivenTask):
            k, added, total, key = result
            rec = shards_rec.setdefault(f"{k:05d}", {})
            rec.setdefault("rows", {})["given"] = total
            rec.setdefault("keys", {"items": rec.get("key")})["given"] = key
            ds.save_manifest()
            return None
        if isinstance(task, MergeTask):
            got = parts.pop(task.k)
            commit(task.k, task.key, sum(r.rows for r in got), sum(r.pairs for r in got), sum(len(r.failed) for r in got))
            return None
        settle(task, result)
        if task_id is not None:
            progress.advance(task_id, len(task.items))
        if result.part is None:
            commit(task.k, task.key, result.rows, result.pairs, len(result.failed))
            return None
        got = parts.setdefault(task.k, [])
        got.append(result)
        if len(got) < n_parts[task.k]:
            return None
        return [MergeTask(task.root, T.JOB, outputs[task.k], task.k, task.key, tuple(sorted(r.part for r in got)))]

    run_tasks(executor, _work, tasks, done)
    run.shards.sort()


def settle_items(ds: Dataset) -> None:
    """Before reading what is there: an items shard that cannot be read goes to DATA/quarantine/ (its
    records are ingested again, as new), and one that was written but never committed (a run killed in
    between) is adopted, with its given shard, when its key is the digest of its ids, as ingest writes it,
    and none of its ids is committed already (a copied shard is left out)."""
    lin = ds.lineage("items")
    rec = ds.stage_record("ingest").setdefault("shards", {})
    for k in lin.unreadable:
        for out in ("items", "given"):
            src = ds.shard(out, k)
            if src.exists():
                dest = ds.root.join("quarantine", out, f"part-{k:05d}.parquet")
                dest.parent().makedirs()
                src.fs.move(src.path, dest.path)
        rec.pop(f"{k:05d}", None)
    seen = {i for k in lin.committed for i in ds.read_shard("items", k, columns=["id"]).column("id").to_pylist()}
    for k in sorted(lin.stale):
        key = ds.shard_key("items", k)
        ids = ds.read_shard("items", k, columns=["id"]).column("id").to_pylist()
        if key is not None and key == digest(sorted(ids)) and not seen & set(ids):  # a copy adds nothing
            keys = {"items": key}
            if ds.shard_key("given", k) == key:
                keys["given"] = key
            rec[f"{k:05d}"] = {"key": key, "keys": keys, "rows": {"items": len(ids)}, "adopted": now_iso()}
            seen.update(ids)
    if lin.unreadable or lin.stale:
        ds.save_manifest()


def _src_of(recs: list[Record], g: dict) -> str:
    """The SRC of the record that gave a pair (its source and source_id), else the item's first record's."""
    for rec in recs:
        if rec.source == g["source"] and rec.source_id == g["source_id"]:
            return rec.src
    return recs[0].src


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
        raise PovidError("give at least one SRC: an image folder, an annotation or preference file (JSON, JSONL, "
                         "Parquet, Arrow), a folder of Parquet files or a datasets.save_to_disk folder")


__all__ = ["IngestRun", "ingest", "check_sources", "check_format"]
