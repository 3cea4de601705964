"""`povid.toml`: every option of every stage in one file, for `povid synth --config povid.toml`.

```toml
[ingest]        # IngestConfig (+ `sources`, used when the command line gives no SRC)
[hallucinate]   # HallucinateConfig   ([hallucinate.api]: the API client, or its keys flat here)
[distort]       # DistortConfig
[sample]        # SampleConfig; sampling runs only when `model` is set (or --vlm)
[correct]       # CorrectConfig; runs only when [filter] kinds (or --kinds) has `corrected`
[filter]        # FilterConfig
[export]        # ExportOptions: format, dir, kind
[run]           # RunOptions: executor, workers, ray_address, limit, retry_failed
```
Keys are the fields of those option classes, which also make the commands' flags (core/options.py), so
the file can never drift from the code: an unknown key, a wrong type or an out-of-range value is a
one-line usage error naming the key. `povid init` writes this file with every option commented out at
its default, and its help.
"""

from __future__ import annotations

import os

from povid_cli.core.errors import UsageError
from povid_cli.core.options import toml_lines, toml_option
from povid_cli.synth.plan import SECTIONS

SECTION_HELP = {
    "ingest": "Reading the sources into DATA/items. `sources` is used when the command line names no SRC.",
    "hallucinate": "Text hallucinations injected into the ground-truth answer (backend rules = offline).",
    "distort": "Image distortion before on-policy sampling (POVID: diffusion noise at t=500).",
    "sample": "On-policy answers of the target VLM on the distorted images; runs only when `model` is set.",
    "correct": "Minimal corrections of the target VLM's own answers on the clean images (OPA-DPO); runs only when "
               "[filter] kinds has `corrected` (then sample answers the clean images too).",
    "filter": "Which pairs are kept (DATA/pairs) and which dropped with a reason (DATA/dropped).",
    "export": "The training-ready export written at the end of every synth run.",
    "run": "Where and how the stages run. Command-line flags override everything in this file.",
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
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise UsageError(f"{path}: unknown section [{unknown[0]}]; valid sections: {', '.join(SECTIONS)}")
    for k, v in data.items():
        if not isinstance(v, dict):
            raise UsageError(f"{path}: `{k}` must be a [{k}] table")
    return data


def section_class(section: str) -> type:
    from povid_cli.core.executors import RunOptions
    from povid_cli.export.job import ExportOptions
    from povid_cli.ingest.normalise import IngestConfig
    from povid_cli.synth.plan import STAGE_REFS, stage_class

    fixed = {"ingest": IngestConfig, "export": ExportOptions, "run": RunOptions}
    return fixed[section] if section in fixed else stage_class(STAGE_REFS[section]).Config


def example_toml() -> str:
    """The commented povid.toml that `povid init` writes (every option at its default)."""
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
            out += toml_option("sources", [], "image folders / annotation files, when the command line gives none")
        try:
            cls = section_class(section)
        except Exception as e:  # noqa: BLE001 - a stage that cannot load still gets its section
            out.append(f"# (options unavailable: {e})")
            continue
        out += toml_lines(cls, section)
    return "\n".join(out) + "\n"


def write_example(path: str, force: bool = False) -> None:
    if os.path.exists(path) and not force:
        raise UsageError(f"{path} exists; use --force to overwrite it")
    text = example_toml()
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
