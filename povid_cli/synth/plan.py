"""What one `povid synth` run will do: povid.toml and the flags merged into the config of every stage.

Each stage is looked up by name (`STAGE_REFS`) when the run needs it, and its config is built from its
povid.toml section with the same validation as its own command's flags (core/options.py); synth's
own flags (--llm-backend, --vlm, --distort, ...) are shortcuts onto those options and win over the file.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any

from povid_cli.core.errors import PovidError, UsageError
from povid_cli.core.executors import RunOptions
from povid_cli.core.options import OptionError, check, from_table, specs
from povid_cli.export.job import ExportOptions
from povid_cli.ingest.normalise import IngestConfig

SECTIONS = ("ingest", "hallucinate", "distort", "sample", "correct", "filter", "export", "run")

# The stages synth runs, in order (ingest is separate: it reads sources, not shards).
STAGE_REFS = {
    "hallucinate": "stages.hallucinate:HallucinateStage",
    "distort": "stages.distort:DistortStage",
    "sample": "stages.sample:SampleStage",
    "correct": "stages.correct:CorrectStage",  # only when the filter makes corrected pairs (see resolve)
    "filter": "stages.filter:FilterStage",
}

# synth's shortcut flags -> (section, candidate option names in that stage's config, nested ones dotted).
FLAG_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "llm_backend": ("hallucinate", ("backend",)),
    "llm_model": ("hallucinate", ("model",)),
    "vlm": ("sample", ("model",)),
    "sample_backend": ("sample", ("backend",)),
    "distort": ("distort", ("methods", "method")),
    "kinds": ("filter", ("kinds",)),
    "image_root": ("ingest", ("image_root",)),
}
API_BASE_FIELDS = ("api_base", "api.api_base")


def _filter_kinds(classes: dict, sections: dict) -> tuple[str, ...]:
    """The pair kinds the filter will make (its `kinds` option, from povid.toml or --kinds)."""
    cls = classes.get("filter")
    if cls is None or "kinds" not in {s.name for s in specs(cls.Config)}:
        return ()
    return tuple(from_table(cls.Config, sections["filter"], "filter").kinds)


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
    ingest: IngestConfig
    stages: list[tuple[str, Any]]  # (name, Stage instance), in run order
    export: ExportOptions
    run: RunOptions
    skipped: list[str] = field(default_factory=list)  # stages left out (sample without a model)

    def effective(self) -> dict:
        out: dict[str, Any] = {"sources": list(self.sources), "ingest": dataclasses.asdict(self.ingest)}
        for name, st in self.stages:
            out[name] = st.config_dict()
        out["export"] = dataclasses.asdict(self.export)
        out["run"] = dataclasses.asdict(self.run)
        out["skipped"] = list(self.skipped)
        return out


def set_option(cls: type, values: dict, names: tuple[str, ...], value: Any) -> str | None:
    """Set the first of `names` that cls has ("api.api_base" for a nested one) in a TOML-like table;
    a one-value option given a list takes its only item. Returns the name set, or None."""
    by_path = {".".join(s.path): s for s in specs(cls)}
    for name in names:
        s = by_path.get(name)
        if s is None:
            continue
        if isinstance(value, (list, tuple)) and s.type is not tuple:
            if len(value) > 1:
                raise UsageError(f"the {name} option of this stage takes one value, got {len(value)}")
            value = value[0]
        if len(s.path) == 2:
            values.setdefault(s.path[0], {})[s.path[1]] = value
        else:
            values[name] = value
        return name
    return None


def _flag(cls: type, name: str, flag: str, value: Any) -> Any:
    """A synth flag's value checked as the option it sets, so the error names the flag, not the file."""
    try:
        return check(next(s for s in specs(cls) if s.name == name), value)
    except OptionError as e:
        raise UsageError(f"{flag} {e.problem}") from None


def resolve(toml: dict, sources: list[str], flags: dict, data: str | None = None) -> SynthPlan:
    """Merge povid.toml and the flags (flags win) into stage configs; bad options are usage errors."""
    sections = {s: dict(toml.get(s, {})) for s in SECTIONS}
    ingest_vals = sections["ingest"]
    toml_sources = ingest_vals.pop("sources", [])
    if isinstance(toml_sources, str):
        toml_sources = [toml_sources]
    if not isinstance(toml_sources, list) or not all(isinstance(s, str) for s in toml_sources):
        raise UsageError(f"[ingest] sources must be a list of paths, got {toml_sources!r}")
    sources = list(sources or toml_sources)
    if not sources:
        raise UsageError("give at least one SRC (an image folder or annotation file), or `sources` under [ingest] in povid.toml")
    classes = {name: stage_class(ref) for name, ref in STAGE_REFS.items()}
    configs = {"ingest": IngestConfig, **{name: cls.Config for name, cls in classes.items()}}
    for flag, (section, names) in FLAG_FIELDS.items():
        value = flags.get(flag)
        if value is None or value == [] or value == ():
            continue
        if not set_option(configs[section], sections[section], names, value):
            raise UsageError(f"--{flag.replace('_', '-')} has no matching option in the {section} stage")
        if flag == "kinds":  # a bad kind is named as the flag, not as the file's key
            _flag(configs[section], "kinds", "--kinds", value)
    ingest = from_table(IngestConfig, ingest_vals, "ingest")
    if flags.get("api_base"):
        hit = False
        for section in ("hallucinate", "sample", "correct"):
            if section not in classes:
                continue
            if section == "hallucinate" or str(sections[section].get("backend", "")).lower() == "openai":
                hit |= bool(set_option(classes[section].Config, sections[section], API_BASE_FIELDS, flags["api_base"]))
        if not hit:
            raise UsageError("--api-base has no matching option in the hallucinate stage")
    # Corrected pairs (OPA-DPO) are made only when asked for (filter kinds): then sample answers on the clean
    # images too (unless [sample] clean says otherwise) and correct runs between sample and filter.
    corrected = "corrected" in _filter_kinds(classes, sections)
    if corrected:
        if not sections["sample"].get("model"):
            raise UsageError("corrected pairs need the target model's own answers: give --vlm (or [sample] model) "
                             "with --kinds ...,corrected")
        sections["sample"].setdefault("clean", True)

    stages, skipped = [], []
    for name, cls in classes.items():
        vals = sections[name]
        if name == "sample" and not vals.get("model"):
            skipped.append("sample")  # on-policy sampling needs the target VLM: --vlm PATH
            continue
        if name == "correct" and not corrected:
            continue  # not asked for: not part of this pipeline (nothing to report as skipped)
        stage = cls(from_table(cls.Config, vals, name))
        if data:
            from povid_cli.synth.single import with_response_cache

            stage = with_response_cache(stage, data)  # re-runs and resumes never pay twice for a request
        stages.append((name, stage))

    export_vals = dict(sections["export"])
    for flag, key in (("export", "format"), ("export_dir", "dir")):
        if flags.get(flag) is not None:
            export_vals[key] = _flag(ExportOptions, key, f"--{flag.replace('_', '-')}",
                                     flags[flag].lower() if key == "format" else flags[flag])
    export = from_table(ExportOptions, export_vals, "export")
    run_vals = dict(sections["run"])
    for s in specs(RunOptions):
        if flags.get(s.name) is not None and flags.get(s.name) is not False:
            run_vals[s.name] = _flag(RunOptions, s.name, s.option, flags[s.name])
    run = from_table(RunOptions, run_vals, "run")
    return SynthPlan(sources, ingest, stages, export, run, skipped)
