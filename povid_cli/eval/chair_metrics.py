"""CHAIR (Rohrbach et al., 2018, "Object Hallucination in Image Captioning"): pure functions.

Objects are found with the one CHAIR matcher povid has (stages/chair.py: the COCO synonym list,
longest phrase first, plurals folded). Per image the ground truth is its instance categories plus the
COCO objects its captions name. As in the reference code (LisaAnne/Hallucination, utils/chair.py):
  CHAIR_i = hallucinated object mentions / all object mentions   (every mention counts, repeats too)
  CHAIR_s = answers with at least one hallucinated object / answers
  recall  = ground-truth objects mentioned / ground-truth objects  (summed over images)
  avg_len = mean answer length in words

    truth = ground_truth(["dog", "dining table"], ["A dog under a table."])
    s = score_answer("A dog and a cat on a table.", truth)   # s["hallucinated"] == ["cat"]
    chair_metrics([s, ...])                                    # {"chair_s", "chair_i", "recall", "avg_len", "n"}
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

from povid_cli.core import coco as coco_list
from stages.chair import canonical, find_objects, object_mentions


@lru_cache(maxsize=1)
def vocabulary() -> frozenset[str]:
    """The 80 categories CHAIR can find in a text."""
    return frozenset(c for c, _ in coco_list.categories())


def ground_truth(instance_objects: Iterable[str] | None, captions: Iterable[str] | None = None) -> set[str]:
    """The CHAIR categories an image shows: its instance categories (mapped through the synonym list)
    plus every object its captions name. Categories outside the COCO list are dropped: no answer can
    mention them, so they would only lower recall."""
    truth = set(canonical(list(instance_objects or [])))
    for c in captions or []:
        truth.update(find_objects(c))
    return truth & vocabulary()


def score_answer(answer: str, truth: set[str]) -> dict:
    """One answer against its image's ground truth.

    -> {"mentions": [category per mention, in order], "hallucinated": [mentions not in truth],
        "covered": [ground-truth categories mentioned], "n_truth": len(truth), "length": words}
    """
    mentions = [cat for _, _, cat in object_mentions(answer or "")]
    return {"mentions": mentions, "hallucinated": [m for m in mentions if m not in truth],
            "covered": sorted({m for m in mentions if m in truth}), "n_truth": len(truth),
            "length": len((answer or "").split())}


def chair_metrics(scored: list[dict]) -> dict:
    """CHAIR_s, CHAIR_i, recall, avg_len and n over scored answers (score_answer's dicts); rates in [0, 1]."""
    n = len(scored)
    mentions = sum(len(s["mentions"]) for s in scored)
    halluc = sum(len(s["hallucinated"]) for s in scored)
    truth = sum(s["n_truth"] for s in scored)
    return {
        "chair_s": sum(1 for s in scored if s["hallucinated"]) / n if n else 0.0,
        "chair_i": halluc / mentions if mentions else 0.0,
        "recall": sum(len(s["covered"]) for s in scored) / truth if truth else 0.0,
        "avg_len": sum(s["length"] for s in scored) / n if n else 0.0,
        "n": n,
    }
