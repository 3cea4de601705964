"""Which shards of an output are real: committed by the manifest, and chained to committed inputs.

A shard file counts only when
- it can be read (a truncated or corrupt file is `unreadable`, named with the way to rebuild it);
- the manifest's record of the stage that writes it lists that shard with the key the file carries
  (a copied file, a file of a killed run that was never committed, a foreign Parquet named like a
  shard: `stale`, never read by export, report, status or train);
- every input it was computed from is itself committed with the key recorded for it (an output whose
  items shard was deleted or rebuilt differently is `stale` too, and recomputed by the next run).
The runner and ingest adopt a shard whose key they can re-derive (the same key computed again from
committed inputs), so a run killed between writing a shard and committing it loses nothing.
Records of older datasets carry no input keys: for them the file's key matching the record is enough.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from povid_cli.core.errors import PovidError


class ShardUnreadable(PovidError):
    """A shard file that exists but cannot be read (truncated, corrupt)."""


@dataclass
class Lineage:
    committed: dict[int, str] = field(default_factory=dict)  # shard -> key
    stale: list[int] = field(default_factory=list)
    unreadable: dict[int, str] = field(default_factory=dict)  # shard -> why


def writer(manifest: dict, output: str) -> tuple[str, dict] | None:
    """(stage name, its manifest record) of the stage that writes `output`; ingest writes items."""
    stages = manifest.get("stages", {})
    if output in ("items", "given"):
        return ("ingest", stages["ingest"]) if "ingest" in stages else None
    for name, rec in stages.items():
        if output in (rec.get("writes") or ()):
            return name, rec
    return None


def repair_hint(manifest: dict, output: str) -> str:
    if output in ("items", "given"):
        return "run `povid ingest` (or `povid synth`) with the same sources: it rebuilds it"
    w = writer(manifest, output)
    name = w[0] if w else "the stage that writes it"
    return f"run `povid {name} DATA` (or `povid synth`) again: it recomputes it"


def compute(ds, output: str, memo: dict[str, Lineage]) -> Lineage:
    if output in memo:
        return memo[output]
    out = memo[output] = Lineage()
    w = writer(ds.manifest, output)
    records = (w[1].get("shards") or {}) if w else {}
    for k in ds.shard_ids(output):
        try:
            key = ds.footer_key(output, k)
        except ShardUnreadable as e:
            out.unreadable[k] = str(e)
            continue
        rec = records.get(f"{k:05d}")
        recorded = ((rec.get("keys") or {}).get(output) or rec.get("key")) if rec else None
        if rec is None or (recorded is not None and recorded != key):
            out.stale.append(k)
            continue
        inputs = {r: compute(ds, r, memo) for r in rec.get("inputs") or {}}
        broken = [lin.unreadable[k] for lin in inputs.values() if k in lin.unreadable]
        if broken:  # what it was made from cannot be read: neither can it be trusted, and the fix is upstream
            out.unreadable[k] = broken[0]
        elif all(lin.committed.get(k) == rec["inputs"][r] for r, lin in inputs.items()):
            out.committed[k] = key
        else:
            out.stale.append(k)
    return out
