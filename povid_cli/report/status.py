"""`povid status`: what each stage of DATA has done, from the manifest and the shard footers (plain data)."""

from __future__ import annotations

from povid_cli.core.store import Dataset, digest
from povid_cli.ingest.accounting import accounting, skipped_text

PIPELINE = ("ingest", "hallucinate", "distort", "sample", "filter")
# What a stage reads/writes when its manifest record does not say (ingest has no reads).
DEFAULT_IO = {
    "ingest": ((), ("items",)),
    "hallucinate": (("items",), ("hallucinated",)),
    "distort": (("items",), ("distorted",)),
    "sample": (("distorted",), ("sampled",)),
    "filter": (("items",), ("pairs", "dropped")),
}


def _shards(ds: Dataset, output: str) -> list[int]:
    """The shards that count: committed ones (core/lineage.py); every shard of a failed/* output."""
    return ds.shard_ids(output) if output.startswith("failed/") else sorted(ds.lineage(output).committed)


def _count(ds: Dataset, output: str) -> int:
    return sum(ds.num_rows(output, k) for k in _shards(ds, output))


def column_counts(ds: Dataset, output: str, column: str) -> dict[str, int]:
    """value -> rows, over every shard that counts (shards without the column are skipped)."""
    counts: dict[str, int] = {}
    for k in _shards(ds, output):
        try:
            values = ds.read_shard(output, k, columns=[column]).column(column).to_pylist()
        except (KeyError, ValueError, OSError):
            continue  # no such column in this shard
        for v in values:
            counts[str(v)] = counts.get(str(v), 0) + 1
    return counts


def stage_status(ds: Dataset, name: str) -> dict:
    """Everything `status` shows for one stage, as plain data."""
    rec = ds.manifest.get("stages", {}).get(name)
    reads, writes = DEFAULT_IO.get(name, ((), ()))
    if rec:
        reads = tuple(rec.get("reads") or reads)
        writes = tuple(rec.get("writes") or writes)
    # Outputs written without a manifest record (by hand, or an older povid) still count as run.
    ran = bool(rec) or bool(writes and ds.has(writes[0]))
    st: dict = {"stage": name, "run": ran, "reads": list(reads), "writes": list(writes)}
    if not ran:
        return st
    rec = rec or {}
    main = writes[0] if writes else None
    shards = rec.get("shards", {})
    done = _shards(ds, main) if main else []
    if not reads:  # ingest: every items shard is a finished unit of its own
        total = len(done)
        acc = accounting(ds.manifest) if name == "ingest" else None
        if acc:  # every record of every SRC: items, given pairs, skipped by reason, failed
            st["records"] = acc
        rows_in = acc["records"] if acc else sum(ds.num_rows(main, k) for k in done) + _count(ds, f"failed/{name}")
    else:
        total = len(_shards(ds, reads[0]))
        rows_in = sum((shards.get(f"{k:05d}") or {}).get("rows_in", 0) for k in done)
    lineages = {w: ds.lineage(w) for w in writes}
    st["stale"] = {w: lin.stale for w, lin in lineages.items() if lin.stale}
    st["unreadable"] = {w: {str(k): why for k, why in lin.unreadable.items()} for w, lin in lineages.items()
                        if lin.unreadable}
    st["shards_done"], st["shards_total"] = len(done), total
    st["rows_in"] = rows_in
    st["rows_out"] = {w: _count(ds, w) for w in writes if w == main or name != "ingest" or ds.has(w)}
    retry = column_counts(ds, f"failed/{name}", "retryable")
    st["failed"] = sum(retry.values())
    st["retryable"] = retry.get("True", 0)
    st["failed_by_kind"] = column_counts(ds, f"failed/{name}", "kind")
    if "dropped" in writes:
        st["dropped"] = st["rows_out"].pop("dropped")
        st["dropped_by_reason"] = column_counts(ds, "dropped", "drop_reason")
    last = rec.get("last_run") or {}
    st["last_run_seconds"] = last.get("seconds")
    st["last_run_started"] = last.get("started")
    st["config_hash"] = rec.get("config_hash") or (digest(rec["config"]) if rec.get("config") else None)
    st["usage"] = rec.get("usage") or {}
    return st


def collect(data: str) -> dict:
    """What `povid status DATA` shows, as plain data (also its --json output)."""
    ds = Dataset.open(data)
    names = list(PIPELINE) + [n for n in ds.manifest.get("stages", {}) if n not in PIPELINE]
    return {
        "dataset": ds.root.url,
        "created": ds.manifest.get("created"),
        "updated": ds.manifest.get("updated"),
        "povid_version": ds.manifest.get("povid_version"),
        "stages": [stage_status(ds, n) for n in names],
        "exports": [e for e in ds.manifest.get("exports", []) if _exists(e.get("path"))],  # not ones deleted since
    }


def records_line(acc: dict) -> str:
    """`ingest: N records -> items, given pairs, skipped (by reason), failed`, from `accounting`."""
    s = (f"ingest: {acc['records']} records -> {acc['items']} items ({acc['new']} new, {acc['already_present']} already "
         f"present), {acc['given_pairs']} given pairs, {skipped_text(acc['skipped'])}, {acc['failed']} failed")
    return s + (f", {acc['limited']} left by --limit" if acc.get("limited") else "")


def drop_reasons(data: str) -> dict[str, int]:
    """drop_reason -> rows of DATA/dropped."""
    return column_counts(Dataset.open(data), "dropped", "drop_reason")


def _exists(path: str | None) -> bool:
    from povid_cli.core.fs import resolve

    try:
        return bool(path) and resolve(path).exists()
    except Exception:  # noqa: BLE001 - a URL of a filesystem not installed here: say nothing about it
        return False
