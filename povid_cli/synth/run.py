"""Running `povid synth`: ingest -> hallucinate -> distort -> [sample] -> filter -> export, under one lock.

Every stage goes through the same runner as its own command, so each one resumes on its own: shard
keys chain from a stage's config to everything after it, so on a re-run
- new images (ingest adds new `items` shards) go through every stage and nothing else is rewritten;
- a changed stage config re-runs that stage and the stages that read its output, nothing before;
- a killed run picks up at the first shard that is not complete.
The export is written beside its final place and swapped in, and is skipped when the pairs did not
change since the last export.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from povid_cli.core.errors import PovidError
from povid_cli.core.runs import record_run
from povid_cli.core.store import Dataset, now_iso
from povid_cli.synth.plan import SynthPlan


@dataclass
class StepReport:
    """One line of the summary table."""

    stage: str
    rows_in: int = 0
    rows_new: int = 0  # rows written by this run (main output)
    rows_total: int = 0  # rows in the main output now
    failed: int = 0  # rows that failed in this run
    shards_run: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0
    tokens: int = 0
    note: str = ""


@dataclass
class SynthResult:
    steps: list[StepReport] = field(default_factory=list)
    pairs_by_kind: dict[str, int] = field(default_factory=dict)
    drops_by_reason: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # a few "stage: id: error" lines
    export: dict | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.steps)


def _tokens(usage: dict) -> int:
    return int(sum(v for k, v in usage.items() if k.endswith("tokens") and k != "total_tokens")
               or usage.get("total_tokens", 0))


def _count(ds: Dataset, output: str) -> int:
    return sum(ds.num_rows(output, k) for k in ds.committed_shards(output))


def _value_counts(ds: Dataset, output: str, column: str) -> dict[str, int]:
    try:
        t = ds.read_all(output, columns=[column])
    except (KeyError, ValueError, OSError):
        return {}
    if t is None:
        return {}
    out: dict[str, int] = {}
    for v in t.column(column).to_pylist():
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


def run_synth(data: str, plan: SynthPlan, *, progress=None, executor=None) -> SynthResult:
    """Run the whole pipeline on DATA under one lock. Raises PovidError on setup problems."""
    from povid_cli.core.executors import make_executor
    from povid_cli.ingest.job import ingest
    from povid_cli.core.runner import run_stage, summarize_failures

    t0 = time.perf_counter()
    result = SynthResult()
    if executor is None and plan.run.executor == "ray":  # fail before DATA is created
        from povid_cli.core.errors import require
        from povid_cli.core.executors import check_reachable

        require("ray", "ray")
        if plan.run.ray_address:
            check_reachable(plan.run.ray_address)
    ds = Dataset.open_or_create(data)
    with ds.lock():
        started = now_iso()
        rec = ds.manifest.setdefault("synth", {})
        rec["config"] = plan.effective()
        ds.save_manifest()
        ex = executor or make_executor(plan.run.executor, plan.run.workers, plan.run.ray_address)
        try:
            ing = ingest(ds, plan.sources, plan.ingest, ex, limit=plan.run.limit, progress=progress)
            result.steps.append(StepReport("ingest", rows_in=ing.scanned, rows_new=ing.new, rows_total=_count(ds, "items"),
                                           failed=ing.failed, shards_run=len(ing.shards), seconds=ing.seconds,
                                           note=_ingest_note(ing)))
            result.failures += [f"ingest: {f['error']}" for f in ing.failures[:3]]
            if not ds.has("items"):
                raise PovidError(f"nothing to do: no items could be read from {', '.join(plan.sources)}")
            for name, stage in plan.stages:
                r = run_stage(ds, stage, ex, limit=plan.run.limit, retry_failed=plan.run.retry_failed,
                              progress=progress)
                main = stage.writes[0]
                step = StepReport(name, rows_in=r.rows_in, rows_new=r.rows_out.get(main, 0),
                                  rows_total=_count(ds, main), failed=r.failed, shards_run=r.shards_run,
                                  shards_skipped=r.shards_skipped, seconds=r.seconds, tokens=_tokens(r.usage))
                if r.shards_waiting:
                    step.note = f"{r.shards_waiting} shard(s) waiting for inputs"
                result.steps.append(step)
                if r.failed:
                    result.failures += [f"{name}: {line}" for line in summarize_failures(ds, name)]
            result.export = _export(ds, plan, progress, ex)
            ex.close()
        except BaseException:
            ex.terminate()  # Ctrl-C / SIGTERM: stop the workers now; finished shards are kept
            raise
        finally:
            result.seconds = time.perf_counter() - t0
            record_run(ds, rec, {"started": started, "seconds": round(result.seconds, 3), "failed": result.failed,
                                 "steps": [dataclasses.asdict(s) for s in result.steps], "finished": now_iso()})
    result.pairs_by_kind = _value_counts(ds, "pairs", "kind")
    result.drops_by_reason = _value_counts(ds, "dropped", "drop_reason")
    return result


def _ingest_note(ing) -> str:
    from povid_cli.ingest.accounting import skipped_text

    t = ing.tally
    parts = [f"{t.present} already present"] if t.present else []
    if t.pairs:
        parts.append(f"{t.pairs} given pairs ({t.pairs_new} new)")
    if t.skipped:
        parts.append(skipped_text(t.skipped))
    return ", ".join(parts)


def _export(ds: Dataset, plan: SynthPlan, progress, executor) -> dict | None:
    exp = plan.export
    if exp.format == "none":
        return None
    from povid_cli.export.job import export_if_changed

    dest = exp.dir or ds.root.join("export", exp.format).url
    return export_if_changed(ds, dest, exp.format, exp.kind, plan.run.limit, progress=progress, executor=executor)
