"""`povid eval --compare A.json B.json ...`: the figures of several eval results side by side, with deltas.

    table = compare(["base.json", "tuned.json"])   # -> Table(headers, rows, notes)
    for r in table.rows: r.label, r.values, r.deltas, r.better   # deltas against the first file

Rates are shown in percent (as papers report CHAIR and POPE), avg_len in words. `better` says which
direction is an improvement (-1: lower is better, +1: higher, 0: neither, e.g. the yes-ratio).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from povid_cli.core.errors import PovidError
from povid_cli.core.fs import resolve

CHAIR_ROWS = (("chair_s", "CHAIR_s", -1, 100), ("chair_i", "CHAIR_i", -1, 100), ("recall", "recall", 1, 100),
              ("avg_len", "avg_len (words)", 0, 1))
# precision and recall stay in results.json and on the answers page; the table keeps what papers quote
POPE_ROWS = (("accuracy", "accuracy", 1), ("f1", "F1", 1), ("yes_ratio", "yes-ratio", 0))
# settings that change which questions are asked: results differing here are not on the same questions
SAME_QUESTIONS = ("n_images", "seed", "coco_instances", "coco_captions", "pope_files", "prompt", "subsets")


@dataclass
class Row:
    label: str
    values: list[float | None]
    better: int = 0
    scale: float = 100

    @property
    def deltas(self) -> list[float | None]:
        first = self.values[0]
        return [None if first is None or v is None else v - first for v in self.values]


@dataclass
class Table:
    headers: list[str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_results(path: str) -> dict:
    loc = resolve(path)
    if not loc.exists() or loc.is_dir():
        raise PovidError(f"{path}: no such file")
    try:
        res = json.loads(loc.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PovidError(f"{path} is not a JSON file: {e}") from None
    if not isinstance(res, dict) or not ("chair" in res or "pope" in res):
        raise PovidError(f"{path} is not a `povid eval` results file (no 'chair' or 'pope' figures)")
    return res


def _section_rows(prefix: str, sections: list[dict]) -> list[Row]:
    rows = []
    chairs = [s.get("chair") or {} for s in sections]
    if any(chairs):
        for key, name, better, scale in CHAIR_ROWS:
            rows.append(Row(f"{prefix}CHAIR {name}", [c.get(key) for c in chairs], better, scale))
    popes = [s.get("pope") or {} for s in sections]
    splits = list(dict.fromkeys(sp for p in popes for sp in p))
    for split in splits:
        for key, name, better in POPE_ROWS:
            rows.append(Row(f"{prefix}POPE {split} {name}", [(p.get(split) or {}).get(key) for p in popes], better))
    if len(splits) > 1:  # the single POPE figure papers quote is usually the mean over the three splits
        for key, name in (("accuracy", "accuracy"), ("f1", "F1")):
            vals = []
            for p in popes:
                got = [(p.get(s) or {}).get(key) for s in splits]
                vals.append(sum(got) / len(got) if got and None not in got else None)
            rows.append(Row(f"{prefix}POPE mean {name}", vals, 1))
    return rows


def compare(paths: list[str]) -> Table:
    """Load eval results and line their figures up (the first file is the baseline of the deltas)."""
    if len(paths) < 2:
        raise PovidError("--compare needs at least two results files, e.g. povid eval --compare base.json tuned.json")
    results = [load_results(p) for p in paths]
    headers = []
    for p, r in zip(paths, results):
        what = Path(r.get("adapter") or r.get("model") or "").name
        headers.append(f"{Path(p).name}" + (f" ({what})" if what else ""))
    table = build_table(results, headers)
    first = results[0].get("config") or {}
    for p, r in zip(paths[1:], results[1:]):
        cfg = r.get("config") or {}
        diff = [k for k in SAME_QUESTIONS if cfg.get(k) != first.get(k)]
        if diff:
            table.notes.append(f"{Path(p).name} differs from {Path(paths[0]).name} in {', '.join(diff)}: "
                               "the figures are not on the same questions")
    for p, r in zip(paths, results):
        if r.get("failed"):
            table.notes.append(f"{Path(p).name}: {r['failed']} answer(s) failed and are left out of its figures")
    return table


def build_table(results: list[dict], headers: list[str]) -> Table:
    """The rows of figures of already loaded results (one column each; a single result works too)."""
    table = Table(headers)
    table.rows.extend(_section_rows("", results))
    names = list(dict.fromkeys(n for r in results for n in (r.get("subsets") or {})))
    for name in names:
        table.rows.extend(_section_rows(f"[{name}] ", [(r.get("subsets") or {}).get(name) or {} for r in results]))
    return table


def fmt(v: float | None, scale: float, signed: bool = False) -> str:
    if v is None:
        return "-"
    x = v * scale
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def rich_table(table: Table):
    """A rich Table: one column per results file, the deltas against the first one coloured
    (green: better, red: worse) where a direction is better."""
    from rich.table import Table as RichTable
    from rich.markup import escape

    t = RichTable(show_header=True, header_style="bold")
    t.add_column("figure (%)")
    for i, h in enumerate(table.headers):
        t.add_column(escape(h), justify="right")
        if i:
            t.add_column("delta", justify="right")
    for row in table.rows:
        cells = [escape(row.label)]
        for i, (v, d) in enumerate(zip(row.values, row.deltas)):
            cells.append(fmt(v, row.scale))
            if i:
                colour = "" if d is None or row.better == 0 or abs(d) < 1e-12 else (
                    "green" if d * row.better > 0 else "red")
                text = fmt(d, row.scale, signed=True)
                cells.append(f"[{colour}]{text}[/{colour}]" if colour else text)
        t.add_row(*cells)
    return t
