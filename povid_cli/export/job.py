"""The export job: DATA's pairs -> OUT in one format, built by the workers, swapped in when complete.

`export_dataset(ds, out, fmt)` is what `povid export` calls; `export_if_changed` is what `povid synth`
calls (it skips the export when the pairs and options did not change since the last one). The driver
plans from light columns (kind, rejected), the workers convert one source shard each
(povid_cli/export/tasks.py) into a temporary sibling of OUT, and OUT is replaced only by a complete
export (povid_cli/export/swap.py).

Incremental: the marker of an export (`povid-export.json`) records, per source shard, a key of what its files
were made from (the shard's lineage key and the options) and the files. The next export links the files of
every shard whose key is unchanged and converts only the others, so a refresh that adds a few shards
writes about what is new; it still builds a complete new version and swaps it in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from povid_cli.core.errors import PovidError, UsageError
from povid_cli.core.executors import InlineExecutor
from povid_cli.core.fs import resolve
from povid_cli.core.options import Options, opt
from povid_cli.core.schedule import run_tasks
from povid_cli.core.store import Dataset, digest, now_iso
from povid_cli.core.version import __version__
from povid_cli.export import formats as conv
from povid_cli.export import tasks as T
from povid_cli.export.swap import MARKER, check_out, clean_leftovers, new_version, swap_in
from stages.weights import FLOOR

MAX_EXPORTS_KEPT = 50


@dataclass(frozen=True)
class ExportOptions(Options):
    """The export `povid synth` writes at the end of every run (the [export] section of povid.toml)."""

    format: str = opt("trl", "trl | povid | llava | sharegpt | none (no export).", choices=conv.FORMATS + ("none",))
    dir: str | None = opt(None, "Where the export goes [default: DATA/export/<format>]; replaced atomically.")
    kind: str = opt("all", "Which pairs: text | image | contrast | all.", choices=conv.KINDS)


def _plan(ds: Dataset, source: str, kind: str, limit: int | None, kinds_seen: set | None = None
          ) -> list[tuple[int, int | None]]:
    """(shard, pairs to take or None for all) for every shard that contributes, from light columns only; the
    kinds of the pairs it looked at go into `kinds_seen`."""
    out, left = [], limit
    for k in ds.committed_shards(source):
        if left is not None and left <= 0:
            break
        if source == "pairs":
            kinds = ds.read_shard(source, k, columns=["kind"]).column("kind").to_pylist()
            n = len(kinds) if kind == "all" else sum(1 for x in kinds if x == kind)
            if kinds_seen is not None:
                kinds_seen.update(kinds if kind == "all" else [kind] if n else [])
        else:
            n = T.count_given(ds, k) if kind in ("all", "text") else 0
        if n == 0:
            continue
        take = None if left is None or n <= left else left
        out.append((k, take))
        if left is not None:
            left -= min(n, left)
    return out


def shard_keys(ds: Dataset, source: str):
    """task -> what its shard's export files are made from: the shard's lineage key (which chains its inputs')
    and every option of the task."""
    lineages = [ds.lineage(source).committed]
    if source == "items" and ds.has("given"):  # before filter: the given pairs come from two outputs
        lineages.append(ds.lineage("given").committed)
    return lambda t: digest(__version__, t.fmt, t.kind, t.take, t.weights, t.contrast, source, t.k,
                            [lin.get(t.k) for lin in lineages])


def previous_shards(target) -> dict[str, dict]:
    """The per-shard records of the export at OUT ({} when there is none, or it predates them)."""
    marker = target.join(MARKER)
    try:
        return dict(marker.read_json().get("shards") or {}) if marker.exists() else {}
    except (OSError, ValueError):
        return {}  # an unreadable marker: convert everything


def weight_bounds(ds: Dataset) -> tuple[float, float] | None:
    """(min, max) of `weight_score` (filter --weight-by) over every pair of DATA, whatever --kind or --limit
    the export takes, so a pair's weight does not depend on the export's options; None: pairs have no scores.
    Recomputed at every export: a refresh that adds shards rescales every pair by the same new bounds."""
    from stages.weights import bounds

    scores: list = []
    for k in ds.committed_shards("pairs"):
        shard = ds.shard("pairs", k)
        if "weight_score" in shard.parquet_schema().names:
            scores += ds.read_shard("pairs", k, columns=["weight_score"]).column("weight_score").to_pylist()
    return bounds(scores)


def export_dataset(ds: Dataset, out: str, fmt: str, *, kind: str = "all", limit: int | None = None,
                   progress=None, executor=None, record: bool = True) -> dict:
    """Export DATA's pairs to OUT (local path or URL) in `fmt`; returns a summary, also recorded in the
    manifest under `exports` (record=False: DATA is read-only). The caller holds ds.lock() when it records."""
    if fmt not in conv.FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(conv.FORMATS)}")
    if kind not in conv.KINDS:
        raise UsageError(f"unknown kind {kind!r}; choose one of {', '.join(conv.KINDS)}")
    target = resolve(out)
    check_out(ds, target)
    source = "pairs" if ds.has("pairs") else "items"
    if source == "items" and not ds.has("items"):
        raise PovidError(f"{ds.root.url} has no items yet; run `povid ingest` first")
    if executor is None or target.process_local or ds.root.process_local:
        executor = InlineExecutor()  # an in-memory filesystem is not shared with worker processes

    clean_leftovers(target.url)
    kinds_seen: set = set()
    plan = _plan(ds, source, kind, limit, kinds_seen)
    if not plan:
        what = "pairs" if kind == "all" else f"{kind} pairs"
        hint = ("" if source == "pairs" else
                "; run `povid filter` (or `povid synth`) first: before it, only the rejected answers the sources "
                "gave (POVID, TRL, RLAIF-V, ... input) can be exported")
        raise PovidError(f"{ds.root.url} has no {what} to export{hint}")
    target.parent().makedirs()
    weights = weight_bounds(ds) if source == "pairs" else None
    tmp = new_version(target)
    tmp.makedirs()
    contrast = "contrast" in kinds_seen  # every trl file of the export gets `rejected_images` then
    previous = previous_shards(target)
    tasks, keys, key_of = [], {}, shard_keys(ds, source)
    for i, (k, take) in enumerate(plan):
        task = T.ConvertTask(ds.root.url, tmp.url, fmt, source, k, i, kind, take, weights, contrast)
        task = replace(task, key=key_of(task))
        keys[k] = task.key
        old = previous.get(str(k))
        tasks.append(T.ReuseTask(target.url, tmp.url, k, i, old, task) if old and old.get("key") == task.key
                     else task)
    task_id = progress.add_task("export", total=len(tasks)) if progress is not None else None
    counts = {"rows": 0, "pairs": 0, "images": 0, "files": [], "kinds": {}, "skipped": 0, "reused": 0}
    shards: dict[str, dict] = {}

    def done(task, res: T.ConvertResult):
        if isinstance(task, T.AssembleTask):
            counts.update(rows=res.rows, images=res.images, files=res.files)
            return None
        shards[str(task.k)] = res.record(keys[task.k])
        counts["pairs"] += res.pairs
        counts["reused"] += res.reused
        counts["skipped"] += res.skipped
        counts["rows"] += res.rows
        counts["files"] += res.files
        for k, n in res.kinds.items():
            counts["kinds"][k] = counts["kinds"].get(k, 0) + n
        if task_id is not None:
            progress.advance(task_id)
        converted.append(task.index)
        if fmt != "trl" and len(converted) == len(tasks):
            return [T.AssembleTask(tmp.url, fmt, tuple(k for k, _ in plan))]
        return None

    converted: list[int] = []
    try:
        run_tasks(executor, T.run, tasks, done)
        counts["files"] = sorted(counts["files"]) if fmt == "trl" else counts["files"]
        summary = {"format": fmt, "path": target.url, "kind": kind, "rows": counts["rows"], "pairs": counts["pairs"],
                   "kinds": counts["kinds"], "images": counts["images"], "source": source, "limit": limit,
                   "files": counts["files"], "time": now_iso(), "dataset": ds.root.url, "povid_version": __version__,
                   "reused_shards": counts["reused"], "converted_shards": len(tasks) - counts["reused"]}
        if counts["skipped"]:  # contrast pairs a format without a rejected image cannot hold
            summary["skipped"] = {"contrast": counts["skipped"]}
        if weights is not None:  # the bounds every weight was scaled by (stages/weights.py)
            summary["weights"] = {"score_min": weights[0], "score_max": weights[1], "floor": FLOOR}
        tmp.join(MARKER).write_json_atomic({**summary, "shards": shards})
        swap_in(tmp, target)
    except BaseException:
        if tmp.exists():
            tmp.delete()
        raise
    if record:
        exports = [e for e in ds.manifest.get("exports", []) if e.get("path") != target.url]
        exports.append({k: summary[k] for k in ("format", "path", "kind", "rows", "pairs", "images", "source", "limit",
                                                "time")})
        ds.manifest["exports"] = exports[-MAX_EXPORTS_KEPT:]
        ds.save_manifest()
    return summary


def run_export(data: str, out: str, fmt: str, *, kind: str = "all", limit: int | None = None,
               workers: int | None = None, progress=None) -> dict:
    """`povid export`: DATA's lock held (the manifest records the export), the conversion on local workers."""
    from povid_cli.core.executors import make_executor

    ds = Dataset.open(data)
    with ds.lock_unless_read_only() as writable:  # read-only storage: export, just do not record it
        ex = make_executor("local", workers)
        try:
            summary = export_dataset(ds, out, fmt, kind=kind, limit=limit, progress=progress, executor=ex,
                                     record=writable)
        except BaseException:
            ex.terminate()
            raise
        ex.close()
    return summary


def export_key(ds: Dataset, fmt: str, kind: str, limit: int | None = None) -> str:
    """What an export is made from: the pairs shards' keys and the export options."""
    pairs = sorted(ds.lineage("pairs").committed.items())
    return digest(fmt, kind, limit, pairs)


def export_if_changed(ds: Dataset, dest: str, fmt: str, kind: str = "all", limit: int | None = None, *,
                      progress=None, executor=None) -> dict:
    """synth's export: skipped when DATA's pairs and the options are the same as for the last one and
    DEST is still there. The result is recorded under manifest["synth"]["export"]."""
    key = export_key(ds, fmt, kind, limit)
    rec = ds.manifest.setdefault("synth", {})
    prev = rec.get("export") or {}
    t0 = time.perf_counter()
    clean_leftovers(dest)
    if prev.get("key") == key and prev.get("path") == dest and resolve(dest).exists():
        return {**prev, "skipped": True, "seconds": 0.0}
    n_pairs = sum(ds.num_rows("pairs", k) for k in ds.committed_shards("pairs"))
    if n_pairs == 0:
        return {"path": dest, "format": fmt, "rows": 0, "skipped": True, "seconds": 0.0, "note": "no pairs to export"}
    s = export_dataset(ds, dest, fmt, kind=kind, limit=limit, progress=progress, executor=executor)
    info = {"key": key, "path": dest, "format": fmt, "kind": kind, "rows": s.get("rows"), "finished": now_iso()}
    rec["export"] = info
    ds.save_manifest()
    return {**info, "skipped": False, "seconds": time.perf_counter() - t0}
