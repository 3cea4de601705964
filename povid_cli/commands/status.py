"""`povid status DATA`: what each stage has done, from the manifest and the shard footers."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from povid_cli.app import Verbose, command, out

PIPELINE = ("ingest", "hallucinate", "distort", "sample", "filter")
# What a stage reads/writes when its manifest record does not say (ingest has no reads).
DEFAULT_IO = {
    "ingest": ((), ("items",)),
    "hallucinate": (("items",), ("hallucinated",)),
    "distort": (("items",), ("distorted",)),
    "sample": (("distorted",), ("sampled",)),
    "filter": (("items",), ("pairs", "dropped")),
}


def _rows(ds, output: str, k: int) -> int:
    import pyarrow.parquet as pq

    loc = ds.shard(output, k)
    with loc.fs.open_input_file(loc.path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def _count(ds, output: str) -> int:
    return sum(_rows(ds, output, k) for k in ds.shard_ids(output))


def _column_counts(ds, output: str, column: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for k in ds.shard_ids(output):
        try:
            values = ds.read_shard(output, k, columns=[column]).column(column).to_pylist()
        except (KeyError, ValueError, OSError):
            continue  # no such column in this shard
        for v in values:
            counts[str(v)] = counts.get(str(v), 0) + 1
    return counts


def stage_status(ds, name: str) -> dict:
    """Everything `status` shows for one stage, as plain data."""
    from povid_cli.core.store import digest

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
    on_disk = set(ds.shard_ids(main)) if main else set()
    shards = rec.get("shards", {})
    if not reads:  # ingest: every items shard is a finished unit of its own
        done = sorted(on_disk)
        total = len(done)
        rows_in = sum(_rows(ds, main, k) for k in done) + _count(ds, f"failed/{name}")
    else:
        total = len(ds.shard_ids(reads[0]))
        done = [int(k) for k, s in shards.items()
                if int(k) in on_disk and ds.shard_key(main, int(k)) == s.get("key")]
        rows_in = sum(shards[f"{k:05d}"].get("rows_in", 0) for k in done)
    st["shards_done"], st["shards_total"] = len(done), total
    st["rows_in"] = rows_in
    st["rows_out"] = {w: _count(ds, w) for w in writes}
    retry = _column_counts(ds, f"failed/{name}", "retryable")
    st["failed"] = sum(retry.values())
    st["retryable"] = retry.get("True", 0)
    st["failed_by_kind"] = _column_counts(ds, f"failed/{name}", "kind")
    if "dropped" in writes:
        st["dropped"] = st["rows_out"].pop("dropped")
        st["dropped_by_reason"] = _column_counts(ds, "dropped", "drop_reason")
    last = rec.get("last_run") or {}
    st["last_run_seconds"] = last.get("seconds")
    st["last_run_started"] = last.get("started")
    st["config_hash"] = rec.get("config_hash") or (digest(rec["config"]) if rec.get("config") else None)
    st["usage"] = rec.get("usage") or {}
    return st


def collect(ds) -> dict:
    names = list(PIPELINE) + [n for n in ds.manifest.get("stages", {}) if n not in PIPELINE]
    return {
        "dataset": ds.root.url,
        "created": ds.manifest.get("created"),
        "updated": ds.manifest.get("updated"),
        "povid_version": ds.manifest.get("povid_version"),
        "stages": [stage_status(ds, n) for n in names],
        "exports": ds.manifest.get("exports", []),
    }


def _usage_text(usage: dict) -> str:
    if not usage:
        return ""
    tokens = usage.get("total_tokens")
    if tokens is None:
        tokens = sum(v for k, v in usage.items() if k.endswith("tokens"))
    cost = sum(v for k, v in usage.items() if "cost" in k)
    parts = [f"{tokens / 1000:.1f}k tok" if tokens >= 1000 else f"{int(tokens)} tok"] if tokens else []
    if cost:
        parts.append(f"${cost:.4f}")
    return ", ".join(parts)


def render(info: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Piped or in a log, rich would squeeze the table into 80 columns: give it room instead.
    con = out if out.is_terminal else Console(width=160, highlight=False, soft_wrap=True)
    notes, rows = [], []
    for s in info["stages"]:
        if not s["run"]:
            rows.append({"stage": f"[dim]{s['stage']}[/dim]", "shards": "[dim]not run[/dim]"})
            continue
        done, total = s["shards_done"], s["shards_total"]
        row = {"stage": s["stage"], "shards": f"{done}/{total}" if done == total else f"[yellow]{done}/{total}[/yellow]",
               "rows in": str(s["rows_in"]),
               "rows out": escape("\n".join(f"{n} {w}" for w, n in s["rows_out"].items())),
               "failed": "0"}
        if s["failed"]:
            row["failed"] = f"[red]{s['failed']}[/red]" + (f" ({s['retryable']} retryable)" if s["retryable"] else "")
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(s["failed_by_kind"].items(), key=lambda x: -x[1]))
            notes.append(f"{s['stage']} failed: {kinds} (see failed/{s['stage']}/)")
        if "dropped" in s:
            row["dropped"] = str(s["dropped"])
        if s.get("dropped_by_reason"):
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(s["dropped_by_reason"].items(), key=lambda x: -x[1]))
            notes.append(f"{s['stage']} dropped: {reasons}")
        secs = s.get("last_run_seconds")
        row["last run"] = f"{secs:.1f}s" if secs is not None else ""
        row["config"] = (s.get("config_hash") or "")[:8]
        row["usage"] = _usage_text(s["usage"])
        rows.append(row)
    t = Table(title=escape(info["dataset"]), title_justify="left")
    columns = [c for c in ("stage", "shards", "rows in", "rows out", "failed", "dropped", "last run", "config", "usage")
               if c in ("stage", "shards", "rows in", "rows out", "failed") or any(r.get(c) for r in rows)]
    for c in columns:  # dropped / usage only once some stage has them, so the table fits 80 columns
        t.add_column(c, justify="right" if c in ("shards", "rows in", "failed", "dropped", "last run") else "left",
                     no_wrap=c not in ("rows out", "usage"))
    for r in rows:
        t.add_row(*(r.get(c, "") for c in columns))
    con.print(t)
    for n in notes:
        con.print(f"  {escape(n)}")
    if info["exports"]:
        con.print("exports:")
        for e in info["exports"]:
            con.print(escape(f"  {e.get('format')}: {e.get('rows')} rows ({e.get('kind', 'all')}) -> {e.get('path')}  [{e.get('time')}]"))


@command("status")
def status_cmd(
    data: Annotated[str, typer.Argument(help="The povid dataset (local path or URL).", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")] = False,
    verbose: Verbose = 0,
):
    """Show what each stage has done: shards, rows in and out, failures, drops, time, cost, exports.

    Shards are done/total against the stage's primary input; `failed` counts the rows in
    DATA/failed/<stage>/ (retryable ones are tried again by the next run); `dropped` counts what
    `filter` set aside, by reason. Exits 1 if DATA is not a povid dataset.

    Examples:

      povid status data

      povid status data --json | jq '.stages[] | {stage, failed}'
    """
    from povid_cli.core.store import Dataset

    ds = Dataset.open(data)
    info = collect(ds)
    if as_json:
        out.print_json(json.dumps(info, default=str)) if out.is_terminal else print(json.dumps(info, indent=2, default=str))
    else:
        render(info)
