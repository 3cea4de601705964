"""`povid status DATA`: what each stage has done, from the manifest and the shard footers."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from povid_cli.app import Verbose, command, out

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
        for w, ks in s.get("stale", {}).items():
            notes.append(f"{s['stage']}: {len(ks)} {w} shard(s) not committed or left behind by changed inputs "
                         f"(ignored; the next run recomputes them): {', '.join(f'{k:05d}' for k in ks[:5])}")
        for w, bad in s.get("unreadable", {}).items():
            row["shards"] = f"[red]{done}/{total}[/red]"
            notes.extend(f"unreadable: {why}" for why in bad.values())
        if s.get("records"):
            from povid_cli.report.status import records_line

            notes.append(records_line(s["records"]))
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
    for n in dict.fromkeys(notes):  # a broken shard upstream is named once, not once per output it feeds
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
    from povid_cli.report.status import collect

    info = collect(data)
    if as_json:
        out.print_json(json.dumps(info, default=str)) if out.is_terminal else print(json.dumps(info, indent=2, default=str))
    else:
        render(info)
