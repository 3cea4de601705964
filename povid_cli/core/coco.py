"""The 80 COCO object categories and their synonyms (the CHAIR list, Rohrbach et al. 2018).

Bundled as povid_cli/data/coco_synonyms.txt: one category per line, the category first, then its synonyms.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def categories() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(category, names) per COCO category, lower case; names start with the category itself."""
    text = resources.files("povid_cli.core").joinpath("data/coco_synonyms.txt").read_text(encoding="utf-8")
    out = []
    for line in text.splitlines():
        names = [n.strip().lower() for n in line.split(",") if n.strip()]
        if names:
            out.append((names[0], tuple(names)))
    return tuple(out)
