"""Pair weights, MMedPO-style: a raw score per pair from filter's own score columns, min-max normalised to
[FLOOR, 1] over the whole dataset.

`filter --weight-by NAME` stores the raw score of every pair (`weight_score`, a float); `export` and `train`
normalise it over all the pairs of the dataset at the time they run:

    weight = FLOOR + (1 - FLOOR) * (score - min) / (max - min)        (every weight 1 when max == min)

Why the normalisation is not done by filter: filter writes one shard at a time and never rewrites a shard
it already wrote (a cron run adds shards), so weights stored at filter time would each be scaled by the
bounds of whatever shards existed then. The raw score of a pair never changes; an export (or a training run)
scales every pair by the same bounds, which it reports.

Input: pair rows with filter's score columns (`hallucinated_objects`, `changed_attributes`, `n_edits`).
Output: floats. Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

FLOOR = 0.2  # MMedPO's lower bound: no pair is switched off, the least relevant counts a fifth

# name -> what it measures; for all of them more is more relevant (a bigger, plainer hallucination)
WEIGHT_SCORES = {
    "hallucinated_objects": "objects the rejected answer names that the image does not have (CHAIR-style count)",
    "hallucinations": "hallucinated objects + changed attributes (numbers, colours, relations, negations)",
    "n_edits": "changed word spans between chosen and rejected",
}


def _count(value) -> int:
    return len(value) if isinstance(value, (list, tuple)) else 0


def raw_score(row: dict, name: str) -> float | None:
    """The raw score `name` (one of WEIGHT_SCORES) of a pair row with filter's score columns."""
    if name == "hallucinated_objects":
        return float(_count(row.get("hallucinated_objects")))
    if name == "hallucinations":
        return float(_count(row.get("hallucinated_objects")) + _count(row.get("changed_attributes")))
    if name == "n_edits":
        n = row.get("n_edits")
        return None if n is None else float(n)
    raise ValueError(f"unknown weight score {name!r}; choose one of {', '.join(WEIGHT_SCORES)}")


def bounds(scores: Iterable[float | None]) -> tuple[float, float] | None:
    """(min, max) of the scores that are set, or None when none is."""
    vals = [float(s) for s in scores if s is not None and math.isfinite(s)]
    return (min(vals), max(vals)) if vals else None


def normalise(score: float | None, lo: float, hi: float, floor: float = FLOOR) -> float | None:
    """score in [lo, hi] -> [floor, 1]; None stays None (a pair filter could not score)."""
    if score is None or not math.isfinite(score):
        return None
    if hi <= lo:
        return 1.0
    return floor + (1.0 - floor) * (min(max(score, lo), hi) - lo) / (hi - lo)


def weights(scores: list[float | None], floor: float = FLOOR) -> tuple[list[float | None], tuple[float, float] | None]:
    """Every score normalised over this list, and the bounds used."""
    b = bounds(scores)
    if b is None:
        return [None] * len(scores), None
    return [normalise(s, *b, floor=floor) for s in scores], b
