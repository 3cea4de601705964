"""The `synth` pipeline: ingest -> hallucinate -> distort -> [sample] -> filter -> export, under one lock.

Each stage is looked up by name (`stages.<name>:<Name>Stage`) when the run needs it, with its config
built from povid.toml and the command-line flags (config_file.py). Every stage goes through the
same runner as its own command, so each one resumes on its own: shard keys chain from a stage's
config to everything after it, so on a re-run
- new images (ingest adds new `items` shards) go through every stage and nothing else is rewritten;
- a changed stage config re-runs that stage and the stages that read its output, nothing before;
- a killed run picks up at the first shard that is not complete.
The export is written beside its final place and swapped in, and is skipped when the pairs did not
change since the last export.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from dataclasses import dataclass, field
from typing import Any

from povid_cli.synth import config_file
from povid_cli.core.errors import PovidError, UsageError
from povid_cli.core.store import Dataset, digest, now_iso

# The stages synth runs, in order (ingest is separate: it reads sources, not shards).
STAGE_REFS = {
    "hallucinate": "stages.hallucinate:HallucinateStage",
    "distort": "stages.distort:DistortStage",
    "sample": "stages.sample:SampleStage",
    "filter": "stages.filter:FilterStage",
}
EXPORT_FORMATS = ("trl", "povid", "llava", "sharegpt", "none")

# Command-line flags -> (section, candidate field names in that stage's config).
FLAG_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "llm_backend": ("hallucinate", ("backend",)),
    "llm_model": ("hallucinate", ("model",)),
    "vlm": ("sample", ("model",)),
    "sample_backend": ("sample", ("backend",)),
    "distort": ("distort", ("methods", "method")),
}
API_BASE_FIELDS = ("api_base", "api.api_base")


def stage_class(ref: str) -> type:
    module, _, qualname = ref.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise PovidError(f"stage {module} cannot be loaded: {e}") from e
    try:
        return getattr(mod, qualname)
    except AttributeError:
        raise PovidError(f"{module} has no {qualname}") from None


@dataclass
class SynthPlan:
    """The effective configuration of one synth run: what it records in the manifest."""

    sources: list[str]
    ingest: Any
    stages: list[tuple[str, Any]]  # (name, Stage instance), in run order
    export: dict
    run: dict
    skipped: list[str] = field(default_factory=list)  # stages left out (sample without a model)

    def effective(self) -> dict:
        out: dict[str, Any] = {"sources": list(self.sources), "ingest": dataclasses.asdict(self.ingest)}
        for name, st in self.stages:
            out[name] = st.config_dict()
        out["export"] = dict(self.export)
        out["run"] = dict(self.run)
        out["skipped"] = list(self.skipped)
        return out


def _is_openai(values: dict) -> bool:
    return str(values.get("backend", "")).lower() == "openai"


def _uses_api(name: str, values: dict) -> bool:
    return _is_openai(values) or (name == "filter" and bool(values.get("judge_model")))


def default_cache_dir(data: str, stage: str) -> str:
    """DATA/cache/<stage> (what the stage commands use), or a per-user folder for an s3:// / gs:// DATA."""
    import os

    from povid_cli.core.fs import is_url

    if is_url(data):
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "povid", stage)
    return os.path.join(data, "cache", stage)


def resolve(toml: dict, sources: list[str], flags: dict, data: str | None = None) -> SynthPlan:
    """Merge povid.toml and the flags (flags win) into stage configs; bad options are usage errors."""
    from povid_cli.ingest.normalise import IngestConfig

    sections = {s: dict(toml.get(s, {})) for s in config_file.SECTIONS}
    ingest_vals = sections["ingest"]
    toml_sources = ingest_vals.pop("sources", [])
    if isinstance(toml_sources, str):
        toml_sources = [toml_sources]
    sources = list(sources or toml_sources)
    if not sources:
        raise UsageError("give at least one SRC (an image folder or annotation file), or `sources` under [ingest] in povid.toml")
    ingest = config_file.build(IngestConfig, ingest_vals, "ingest")

    classes = {name: stage_class(ref) for name, ref in STAGE_REFS.items()}
    for flag, (section, names) in FLAG_FIELDS.items():
        value = flags.get(flag)
        if value is None or value == [] or value == ():
            continue
        if flag == "distort":
            fld = {f.name: f for f in dataclasses.fields(classes["distort"].Config)}
            name = next((n for n in names if n in fld), None)
            if name is not None and not isinstance(config_file._default_of(fld[name]), tuple):
                if len(value) > 1:
                    raise UsageError("this distort stage takes one --distort method")
                value = value[0]
            else:
                value = tuple(value)
        if not config_file.set_option(classes[section].Config, sections[section], names, value):
            raise UsageError(f"--{flag.replace('_', '-')} has no matching option in the {section} stage")
    if flags.get("api_base"):
        hit = False
        for section in ("hallucinate", "sample"):
            if section == "hallucinate" or _is_openai(sections[section]):
                hit |= bool(config_file.set_option(classes[section].Config, sections[section], API_BASE_FIELDS, flags["api_base"]))
        if not hit:
            raise UsageError("--api-base has no matching option in the hallucinate stage")

    stages, skipped = [], []
    for name, cls in classes.items():
        vals = sections[name]
        if name == "sample" and not vals.get("model"):
            skipped.append("sample")  # on-policy sampling needs the target VLM: --vlm PATH
            continue
        if data and _uses_api(name, vals) and not vals.get("cache_dir"):
            # an API response cache, so that re-runs and resumes never pay twice for a request
            config_file.set_option(cls.Config, vals, ("cache_dir",), default_cache_dir(data, name))
        stages.append((name, cls(config_file.build(cls.Config, vals, name))))

    export = {k: d for k, (d, _) in config_file.EXPORT_OPTIONS.items()}
    for k, v in sections["export"].items():
        if k not in export:
            raise UsageError(f"[export] has no option {k!r}; valid options: {', '.join(export)}")
        export[k] = v
    for k in ("export", "export_dir"):
        if flags.get(k) is not None:
            export["format" if k == "export" else "dir"] = flags[k]
    export["format"] = str(export["format"]).lower()
    if export["format"] not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {export['format']!r}; choose one of {', '.join(EXPORT_FORMATS)}")

    run = {k: d for k, (d, _) in config_file.RUN_OPTIONS.items()}
    for k, v in sections["run"].items():
        if k not in run:
            raise UsageError(f"[run] has no option {k!r}; valid options: {', '.join(run)}")
        run[k] = v
    for k in run:
        if flags.get(k) is not None and flags.get(k) is not False:
            run[k] = flags[k]
    if run["executor"] not in ("local", "ray"):
        raise UsageError(f"unknown executor {run['executor']!r}; choose local or ray")
    for k in ("workers", "limit"):
        if run[k] is not None and (not isinstance(run[k], int) or run[k] < 1):
            raise UsageError(f"[run] {k} must be a positive integer, got {run[k]!r}")
    return SynthPlan(sources, ingest, stages, export, run, skipped)


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
    t = ds.read_all(output, columns=["id"])
    return 0 if t is None else t.num_rows


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


def export_key(ds: Dataset, export: dict, limit: int | None = None) -> str:
    """What an export is made from: the pairs shards' keys and the export options."""
    pairs = [(k, ds.shard_key("pairs", k)) for k in ds.shard_ids("pairs")]
    return digest(export["format"], export["kind"], limit, pairs)


def run_synth(data: str, plan: SynthPlan, *, progress=None, executor=None) -> SynthResult:
    """Run the whole pipeline on DATA under one lock. Raises PovidError on setup problems."""
    from povid_cli.core.executors import make_executor
    from povid_cli.ingest.job import ingest
    from povid_cli.core.runner import run_stage, summarize_failures

    t0 = time.perf_counter()
    result = SynthResult()
    if executor is None and plan.run["executor"] == "ray":  # fail before DATA is created
        from povid_cli.core.errors import require
        from povid_cli.core.executors import _check_reachable

        require("ray", "ray")
        if plan.run["ray_address"]:
            _check_reachable(plan.run["ray_address"])
    ds = Dataset.open_or_create(data)
    with ds.lock():
        started = now_iso()
        rec = ds.manifest.setdefault("synth", {})
        rec["config"] = plan.effective()
        ds.save_manifest()
        ex = executor or make_executor(plan.run["executor"], plan.run["workers"], plan.run["ray_address"])
        try:
            ing = ingest(ds, plan.sources, plan.ingest, ex, limit=plan.run["limit"], progress=progress)
            result.steps.append(StepReport("ingest", rows_in=ing.scanned, rows_new=ing.new, rows_total=_count(ds, "items"),
                                           failed=ing.failed, shards_run=len(ing.shards), seconds=ing.seconds,
                                           note=f"{ing.already} already present" if ing.already else ""))
            result.failures += [f"ingest: {f['error']}" for f in ing.failures[:3]]
            if not ds.has("items"):
                raise PovidError(f"nothing to do: no items could be read from {', '.join(plan.sources)}")
            for name, stage in plan.stages:
                r = run_stage(ds, stage, ex, limit=plan.run["limit"], retry_failed=bool(plan.run["retry_failed"]),
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
            result.export = _export(ds, plan, progress)
            ex.close()
        except BaseException:
            ex.terminate()  # Ctrl-C / SIGTERM: stop the workers now; finished shards are kept
            raise
        finally:
            result.seconds = time.perf_counter() - t0
            last = {"started": started, "seconds": round(result.seconds, 3), "failed": result.failed,
                    "steps": [dataclasses.asdict(s) for s in result.steps], "finished": now_iso()}
            rec["last_run"] = last
            rec["runs"] = (rec.get("runs", []) + [last])[-50:]
            ds.save_manifest()
    result.pairs_by_kind = _value_counts(ds, "pairs", "kind")
    result.drops_by_reason = _value_counts(ds, "dropped", "drop_reason")
    return result


def _export(ds: Dataset, plan: SynthPlan, progress) -> dict | None:
    exp = plan.export
    if exp["format"] == "none":
        return None
    dest = exp["dir"] or ds.root.join("export", exp["format"]).url
    key = export_key(ds, exp, plan.run["limit"])
    rec = ds.manifest.setdefault("synth", {})
    prev = rec.get("export") or {}
    from povid_cli.core.fs import resolve as resolve_path

    t0 = time.perf_counter()
    _clean_export_leftovers(dest)
    if prev.get("key") == key and prev.get("path") == dest and resolve_path(dest).exists():
        return {**prev, "skipped": True, "seconds": 0.0}
    if _count(ds, "pairs") == 0:
        return {"path": dest, "format": exp["format"], "rows": 0, "skipped": True, "seconds": 0.0,
                "note": "no pairs to export"}
    from povid_cli.export.job import export_dataset

    s = export_dataset(ds, dest, exp["format"], kind=exp["kind"], limit=plan.run["limit"], progress=progress)
    info = {"key": key, "path": dest, "format": exp["format"], "kind": exp["kind"], "rows": s.get("rows"),
            "finished": now_iso()}
    rec["export"] = info
    ds.save_manifest()
    return {**info, "skipped": False, "seconds": time.perf_counter() - t0}


def _clean_export_leftovers(dest: str) -> None:
    """Remove half-built (.tmp-) and replaced (.old-) copies of DEST that a killed run left beside it."""
    import os
    import re
    import shutil

    from povid_cli.core.fs import resolve as resolve_path

    loc = resolve_path(dest)
    if not loc.is_local:
        return
    parent, name = os.path.split(loc.path.rstrip(os.sep))
    pat = re.compile(r"^\.(tmp|old)-[0-9a-f]{8}-" + re.escape(name) + "$")
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for n in names:
        if pat.match(n):
            shutil.rmtree(os.path.join(parent, n), ignore_errors=True)
