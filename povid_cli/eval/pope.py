"""POPE (Li et al., 2023, "Evaluating Object Hallucination in Large Vision-Language Models"): pure functions.

Per image, `per_image` (3) objects it shows and as many it does not, asked as "Is there a {object} in the
image?". The absent objects are drawn three ways (one split each):
  random       uniformly among the categories the image does not show;
  popular      the most frequent categories of the whole annotation file that the image does not show;
  adversarial  the categories that most often co-occur with the ones it shows (summed over them).
The present objects of an image are the same in every split, so their questions are asked once.

    qs = build_questions(coco, image_ids, ["random", "adversarial"], seed=0)
    pred, parsed = parse_yes_no("Yes, there is a dog.")       # ("yes", True)
    pope_metrics([(q.label, pred, parsed) for q, pred, parsed in ...])
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from stages.textsim import words

SPLITS = ("random", "popular", "adversarial")
QUESTION = "Is there a {object} in the image?"
YES = {"yes", "yeah", "yep", "yup", "true", "correct", "certainly", "definitely"}
NO = {"no", "not", "nope", "false", "none", "incorrect"}
FIRST_WORDS = 3  # the answer's first words that may carry the yes/no ("I think yes", "Answer: no")


@dataclass(frozen=True)
class Question:
    split: str
    question_id: Any
    image_id: Any
    file_name: str
    object: str
    label: str  # "yes" (the image shows it) | "no"
    given_text: str | None = None  # the question as a --pope-file words it

    @property
    def text(self) -> str:
        return self.given_text or QUESTION.format(object=self.object)


def _rng(seed: int, *parts: Any) -> random.Random:
    # a string seed is hashed deterministically (sha512), so draws never depend on PYTHONHASHSEED
    return random.Random(":".join(map(str, (seed, *parts))))


def absent_objects(split: str, present: list[str], categories: list[str], frequency: Counter,
                   cooccurrence: dict[str, Counter], k: int, rng: random.Random) -> list[str]:
    """`k` categories the image does not show, drawn as `split` says (fewer when the vocabulary runs out)."""
    shown = set(present)
    candidates = [c for c in categories if c not in shown]
    if split == "random":
        return rng.sample(candidates, min(k, len(candidates)))
    if split == "popular":
        score = {c: frequency.get(c, 0) for c in candidates}
    elif split == "adversarial":
        score = {c: sum(cooccurrence.get(p, Counter()).get(c, 0) for p in present) for c in candidates}
    else:
        raise ValueError(f"unknown POPE split {split!r}; one of {', '.join(SPLITS)}")
    # ties: the more frequent category first, then the name, so the draw is the same on every machine
    ranked = sorted(candidates, key=lambda c: (-score[c], -frequency.get(c, 0), c))
    return ranked[:k]


def build_questions(coco, image_ids: Iterable[Any], splits: Iterable[str], seed: int = 0,
                    per_image: int = 3) -> list[Question]:
    """Balanced yes/no questions for each image and split (`coco` is an annotations.Coco)."""
    out: list[Question] = []
    image_ids = list(image_ids)
    for split in splits:
        for image_id in image_ids:
            objs = coco.objects.get(image_id) or []
            k = min(per_image, len(objs))
            present = sorted(_rng(seed, image_id, "present").sample(objs, k))
            absent = absent_objects(split, objs, coco.categories, coco.frequency, coco.cooccurrence, k,
                                    _rng(seed, image_id, split))
            k = min(k, len(absent))  # keep yes and no balanced even when the vocabulary runs out
            fname = coco.file_names[image_id]
            for j, (obj, label) in enumerate([(o, "yes") for o in present[:k]] + [(o, "no") for o in absent[:k]]):
                out.append(Question(split, f"{split}-{image_id}-{j}", image_id, fname, obj, label))
    return out


def parse_yes_no(answer: str | None) -> tuple[str, bool]:
    """("yes" | "no", parsed): the first yes/no word among the answer's first words.

    Anything else ("There is a dog.", "", a refusal) reads as "no" with parsed=False, as in POPE's own
    scoring, and is counted as unparsed in the metrics.
    """
    for w in words(answer)[:FIRST_WORDS]:
        if w in YES:
            return "yes", True
        if w in NO:
            return "no", True
    return "no", False


def pope_metrics(rows: Iterable[tuple[str, str, bool]]) -> dict:
    """Accuracy, precision, recall, F1 (the positive class is "yes"), yes-ratio, n and unparsed count.

    `rows` are (label, prediction, parsed). Rates are in [0, 1]; a rate whose denominator is 0 is 0.
    """
    tp = fp = tn = fn = unparsed = 0
    for label, pred, parsed in rows:
        unparsed += not parsed
        if pred == "yes":
            tp, fp = tp + (label == "yes"), fp + (label != "yes")
        else:
            fn, tn = fn + (label == "yes"), tn + (label != "yes")
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / n if n else 0.0, "n": n, "unparsed": unparsed}
