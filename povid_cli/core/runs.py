"""Run history in the manifest: what each run of a job did, shared by stages, ingest, export and synth.

```
manifest["stages"][name] = {..., "usage": {...totals...}, "last_run": {...}, "runs": [... the last 50 ...]}
manifest["synth"] = {..., "last_run": {...}, "runs": [...]}
```
"""

from __future__ import annotations

from povid_cli.core.store import Dataset

RUNS_KEPT = 50


def record_run(ds: Dataset, rec: dict, summary: dict, usage: dict | None = None) -> None:
    """Append one run's summary to a manifest record (`last_run`, `runs`), add its usage to the
    record's totals, and save the manifest."""
    if usage:
        totals = rec.setdefault("usage", {})
        for k, v in usage.items():
            totals[k] = totals.get(k, 0) + v
    rec["last_run"] = summary
    rec["runs"] = (rec.get("runs", []) + [summary])[-RUNS_KEPT:]
    ds.save_manifest()
