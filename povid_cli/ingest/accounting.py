"""Every record accounted for: what each record became, per SRC and in all, and the failed rows.

A record ends as exactly one of: a new item; already present (its item exists, in DATA or from an
earlier record of the same run: its given pairs are added to that item); skipped (text_only,
no_answer, no_pair; failures with --strict); failed (bad JSON, a missing or broken image, a path outside
the image root, text that is not valid Unicode...); or left for a later run by --limit. So
records = new + already present + skipped + failed (+ left by --limit), which the summary line, the
manifest (stages.ingest.accounting, per SRC) and `povid status` all show.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from povid_cli.core.stage import FAILED_SCHEMA, failure
from povid_cli.core.store import Dataset, digest
from povid_cli.ingest.record import Record, safe


@dataclass
class Tally:
    records: int = 0
    new: int = 0          # records that made a new item
    present: int = 0      # records whose item was already there
    pairs: int = 0        # given pairs of the records that made or joined an item
    pairs_new: int = 0    # given pairs added to DATA by this run
    skipped: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    limited: int = 0      # records of new items left for a later run by --limit

    def add(self, other: "Tally") -> None:
        for k in ("records", "new", "present", "pairs", "pairs_new", "failed", "limited"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for r, n in other.skipped.items():
            self.skipped[r] = self.skipped.get(r, 0) + n

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @classmethod
    def of(cls, d: dict) -> "Tally":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def skipped_text(skipped: dict[str, int]) -> str:
    n = sum(skipped.values())
    inner = ", ".join(f"{v} {k}" for k, v in sorted(skipped.items(), key=lambda x: -x[1]))
    return f"{n} skipped" + (f" ({inner})" if inner else "")


@dataclass
class IngestRun:
    tally: Tally = field(default_factory=Tally)
    by_src: dict[str, Tally] = field(default_factory=dict)
    shards: list[int] = field(default_factory=list)
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)

    # the names synth and older callers use
    @property
    def scanned(self) -> int:
        return self.tally.records

    @property
    def new(self) -> int:
        return self.tally.new

    @property
    def already(self) -> int:
        return self.tally.present

    @property
    def failed(self) -> int:
        return self.tally.failed

    def total(self) -> Tally:
        t = Tally()
        for s in self.by_src.values():
            t.add(s)
        self.tally = t
        return t

    def line(self) -> str:
        t = self.tally
        s = (f"ingest: {t.records} records -> {t.new} new items, {t.present} already present; {t.pairs} given pairs "
             f"({t.pairs_new} new); {skipped_text(t.skipped)}; {t.failed} failed")
        if t.limited:
            s += f"; {t.limited} left for a later run (--limit)"
        return s + f"; {len(self.shards)} shard(s), {self.seconds:.1f}s"


def detail(rec: Record) -> str:
    return json.dumps({"src": rec.src, "source": rec.file, "source_id": rec.source_id,
                       "image": rec.image_names[0] if rec.image_names else None, "turn": rec.turn})


def record_failure(rec: Record, error: str | None = None, kind: str | None = None, retryable: bool = False) -> dict:
    where = safe(os.path.basename(rec.file.rstrip("/")) if "://" not in rec.file else rec.file.rsplit("/", 1)[-1])
    sid = f"#{safe(rec.source_id)}" if rec.source_id is not None else ""
    return failure(None, f"{where}{sid}: {safe(error or rec.error)}", kind=kind or rec.error_kind, retryable=retryable,
                   detail=detail(rec))


def write_failures(ds: Dataset, failures: list[dict], srcs: list[str]) -> None:
    """failed/ingest holds the current failures: this run's, plus earlier ones from sources not read again.

    A SRC read again replaces all its earlier failures (a fixed file, or one deleted from a folder,
    leaves failed/ingest)."""
    def read_again(row: dict) -> bool:
        try:
            d = json.loads(row.get("detail") or "{}")
        except ValueError:
            return False
        if d.get("src"):
            return d["src"] in srcs
        src = d.get("source")  # rows written by povid before 0.x: the file's path
        return bool(src) and any(src == r or src.startswith(r.rstrip(os.sep) + os.sep) for r in srcs)

    prev = ds.read_all("failed/ingest")
    kept = [r for r in (prev.to_pylist() if prev is not None else []) if not read_again(r)]
    rows = kept + [{**f, "stage": "ingest"} for f in failures]
    loc = ds.shard("failed/ingest", 0)
    if rows:
        ds.write_shard("failed/ingest", 0, pa.Table.from_pylist(rows, schema=FAILED_SCHEMA), digest(len(rows)))
    elif loc.exists():
        loc.delete()


def save_accounting(ds: Dataset, run: IngestRun) -> None:
    """stages.ingest.accounting[SRC] = what this run made of that SRC's records (a SRC read again replaces it)."""
    acc = ds.stage_record("ingest").setdefault("accounting", {})
    for src, t in run.by_src.items():
        acc[src] = asdict(t)


def accounting(manifest: dict) -> dict | None:
    """The ingest accounting over every SRC, for `povid status`: records, items, given pairs, skipped, failed."""
    acc = ((manifest.get("stages") or {}).get("ingest") or {}).get("accounting")
    if not acc:
        return None
    t = Tally()
    for d in acc.values():
        t.add(Tally.of(d))
    return {"records": t.records, "items": t.new + t.present, "new": t.new, "already_present": t.present,
            "given_pairs": t.pairs, "skipped": t.skipped, "failed": t.failed, "limited": t.limited,
            "sources": len(acc)}


__all__ = ["Tally", "IngestRun", "record_failure", "write_failures", "save_accounting", "accounting", "skipped_text"]
