"""Prompt templates from the `prompts/` folder: text files with `{placeholders}`.

A template's hash is part of the config hash of every stage that uses it, so editing a prompt re-runs
that stage (and only the shards it touches) on the next run.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

from povid_cli.core.errors import PovidError


@lru_cache(maxsize=None)
def load_prompt(name: str) -> str:
    """The text of prompts/<name> (name with or without .txt)."""
    fname = name if name.endswith((".txt", ".md")) else f"{name}.txt"
    try:
        return resources.files("prompts").joinpath(fname).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise PovidError(f"prompt template {fname!r} not found in prompts/") from e


def prompt_hash(name: str) -> str:
    return hashlib.sha256(load_prompt(name).encode()).hexdigest()[:12]


def render(name: str, **values: str) -> str:
    """Fill a template's {placeholders}; literal braces are written {{ and }}."""
    try:
        return load_prompt(name).format(**values)
    except KeyError as e:
        raise PovidError(f"prompt template {name!r} needs a value for {e}") from e
