"""`povid.toml`: every option of every stage in one file, for `povid synth --config povid.toml`.

```toml
[ingest]        # IngestConfig (+ `sources`, used when the command line gives no SRC)
[hallucinate]   # the hallucinate stage's config dataclass   ([hallucinate.api] for a nested one)
[distort]       # the distort stage's config
[sample]        # the sample stage's config; sampling runs only when `model` is set (or --vlm)
[filter]        # the filter stage's config
[export]        # format = "trl" | "povid" | "llava" | "sharegpt" | "none", dir, kind
[run]           # executor, workers, ray_address, limit, retry_failed
```
Keys are the field names of each stage's config dataclass, so the file can never drift from the
code: an unknown key is a usage error that lists the valid ones. Command-line flags override the
file; the effective config (file + flags + defaults) is what `synth` records in the manifest.
`povid init` writes this file with every option commented out at its default value.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from povid_cli.core.errors import UsageError

SECTIONS = ("ingest", "hallucinate", "distort", "sample", "filter", "export", "run")

# Options of the two sections that are not stage configs: name -> (default, help).
EXPORT_OPTIONS: dict[str, tuple[Any, str]] = {
    "format": ("trl", "trl | povid | llava | sharegpt | none (no export)"),
    "dir": (None, "where the export goes [default: DATA/export/<format>]; replaced atomically"),
    "kind": ("all", "which pairs: text | image | all"),
}
RUN_OPTIONS: dict[str, tuple[Any, str]] = {
    "executor": ("local", "local (processes on this machine) | ray"),
    "workers": (None, "parallel workers [default: local cores, or the Ray cluster's CPUs]"),
    "ray_address": (None, "Ray cluster address, e.g. ray://head:10001 or auto [default: a local Ray]"),
    "limit": (None, "process only the first N items (to try things out)"),
    "retry_failed": (False, "run again rows that failed for any reason, not only transient ones"),
}


def load(path: str | None) -> dict[str, dict]:
    """Read povid.toml into {section: {key: value}}; a missing or malformed file is a usage error."""
    if not path:
        return {}
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist (create one with `povid init`)") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML: {e}") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise UsageError(f"{path}: unknown section [{unknown[0]}]; valid sections: {', '.join(SECTIONS)}")
    for k, v in data.items():
        if not isinstance(v, dict):
            raise UsageError(f"{path}: `{k}` must be a [{k}] table")
    return data


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _coerce(section: str, name: str, default: Any, value: Any) -> Any:
    where = f"[{section}] {name}"
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        if not isinstance(value, dict):
            raise UsageError(f"{where} must be a table ([{section}.{name}])")
        return build(type(default), value, f"{section}.{name}")
    if isinstance(default, tuple):
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise UsageError(f"{where} must be a list, got {value!r}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UsageError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and not isinstance(value, int):
        raise UsageError(f"{where} must be an integer, got {value!r}")
    if isinstance(default, str) and not isinstance(value, str):
        raise UsageError(f"{where} must be a string, got {value!r}")
    if isinstance(value, list):
        return tuple(value)  # frozen configs hold tuples
    return value


def build(cls: type, values: dict, section: str) -> Any:
    """cls(**values) with the keys checked against cls's fields and TOML types coerced to the defaults'."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for k, v in values.items():
        if k not in fields:
            raise UsageError(f"[{section}] has no option {k!r}; valid options: {', '.join(fields) or '(none)'}")
        default = _default_of(fields[k])
        kwargs[k] = v if default is dataclasses.MISSING else _coerce(section, k, default, v)
    try:
        return cls(**kwargs)
    except UsageError as e:
        raise UsageError(f"[{section}] {e}") from None
    except (TypeError, ValueError) as e:
        raise UsageError(f"[{section}] {e}") from None


def section_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def set_option(cls: type, values: dict, names: tuple[str, ...], value: Any) -> str | None:
    """Set the first of `names` that cls has (dotted for a nested config: "api.api_base")."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in names:
        head, _, rest = name.partition(".")
        if head not in fields:
            continue
        if not rest:
            values[head] = value
            return head
        default = _default_of(fields[head])
        if dataclasses.is_dataclass(default):
            sub = dict(values.get(head) or {})
            if set_option(type(default), sub, (rest,), value):
                values[head] = sub
                return name
    return None


# -- povid init ------------------------------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v))


def _option_lines(name: str, default: Any, help_: str | None) -> list[str]:
    lines = [f"# {help_}"] if help_ else []
    if default is None or default is dataclasses.MISSING:
        lines.append(f"# {name} = <not set>")
    else:
        lines.append(f"# {name} = {_toml_value(default)}")
    return lines


def _inline_comments(cls: type) -> dict[str, str]:
    """`field: type = default  # what it does` comments of a config dataclass, as help for povid init."""
    import inspect
    import re

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        m = re.match(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m and '"' not in line.split("#", 1)[1][:1]:
            out[m.group(1)] = m.group(2).strip()
    return out


def _dataclass_block(section: str, cls: type) -> list[str]:
    lines: list[str] = []
    nested: list[tuple[str, type]] = []
    comments = _inline_comments(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = _default_of(f)
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            nested.append((f.name, type(default)))
            continue
        help_ = (f.metadata.get("help") if f.metadata else None) or comments.get(f.name)
        lines += _option_lines(f.name, default, help_)
    for name, sub in nested:
        lines += ["", f"[{section}.{name}]"] + _dataclass_block(f"{section}.{name}", sub)
    return lines


SECTION_HELP = {
    "ingest": "Reading the sources into DATA/items. `sources` is used when the command line names no SRC.",
    "hallucinate": "Text hallucinations injected into the ground-truth answer (backend rules = offline).",
    "distort": "Image distortion before on-policy sampling (POVID: diffusion noise at t=500).",
    "sample": "On-policy answers of the target VLM on the distorted images; runs only when `model` is set.",
    "filter": "Which pairs are kept (DATA/pairs) and which dropped with a reason (DATA/dropped).",
    "export": "The training-ready export written at the end of every synth run.",
    "run": "Where and how the stages run. Command-line flags override everything in this file.",
}


def example_toml() -> str:
    """The commented povid.toml that `povid init` writes (every option at its default)."""
    from povid_cli.synth.pipeline import STAGE_REFS, stage_class
    from povid_cli.ingest.normalise import IngestConfig

    out = [
        "# povid.toml: every option of `povid synth`, one section per stage.",
        "#   povid synth SRC... -o DATA --config povid.toml",
        "# Every option is shown commented out at its default; uncomment what you change.",
        "# Command-line flags override this file; the effective config is recorded in DATA/manifest.json.",
        "# Changing a stage's options re-runs that stage and the ones after it on the next synth, nothing before.",
    ]
    for section in SECTIONS:
        out += ["", f"# {SECTION_HELP[section]}", f"[{section}]"]
        if section == "ingest":
            out += _option_lines("sources", [], "image folders / annotation files, when the command line gives none")
            out += _dataclass_block(section, IngestConfig)
        elif section == "export":
            for k, (d, h) in EXPORT_OPTIONS.items():
                out += _option_lines(k, d, h)
        elif section == "run":
            for k, (d, h) in RUN_OPTIONS.items():
                out += _option_lines(k, d, h)
        else:
            try:
                cls = stage_class(STAGE_REFS[section])
            except Exception as e:  # noqa: BLE001 - a stage that cannot load still gets its section
                out.append(f"# (options unavailable: {e})")
                continue
            out += _dataclass_block(section, cls.Config)
    return "\n".join(out) + "\n"


def write_example(path: str, force: bool = False) -> None:
    if os.path.exists(path) and not force:
        raise UsageError(f"{path} exists; use --force to overwrite it")
    text = example_toml()
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
