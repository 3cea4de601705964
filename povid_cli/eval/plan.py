"""Which images and questions an eval run asks about: deterministic draws, subsets, POPE files. Pure.

    plan = make_plan(coco, benchmarks=("chair", "pope"), n_images=500, seed=0, splits=SPLITS,
                     subsets={"trigger": {1, 2, 3}}, pope_lines={})
    plan.chair_images        # image ids CHAIR describes (the union over subsets)
    plan.questions           # POPE questions (generated, or read from --pope-file)
    plan.subset_images       # name -> {"chair": [ids], "pope": [ids]} drawn for that subset

Draws depend only on the annotation file, `seed` and `n_images`: the same flags pick the same images
on every machine and every run (so base and tuned models are compared on the same questions).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from povid_cli.eval.annotations import Coco, PopeLine
from povid_cli.eval.pope import Question, build_questions

ALL = "all"  # the name of the whole evaluated set when no subset is given


@dataclass
class Plan:
    chair_images: list[Any] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    subset_images: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    file_names: dict[Any, str] = field(default_factory=dict)

    @property
    def images(self) -> list[Any]:
        """Every image the run looks at, each once, in a stable order."""
        return list(dict.fromkeys([*self.chair_images, *(q.image_id for q in self.questions)]))


def _order(ids) -> list[Any]:
    return sorted(ids, key=lambda i: (str(type(i)), i))


def draw(ids, n: int, seed: int, salt: str) -> list[Any]:
    """`n` of `ids` (all when fewer), drawn with `seed`."""
    ids = _order(ids)
    if len(ids) <= n:
        return ids
    return random.Random(f"{seed}:{salt}").sample(ids, n)


def draw_pope(coco: Coco, ids, n: int, seed: int, per_image: int = 3) -> list[Any]:
    """Like `draw`, preferring images that show at least `per_image` categories (as POPE does): small
    COCO-format sets whose images show fewer objects still get questions, fewer per image."""
    ids = _order(ids)
    random.Random(f"{seed}:pope").shuffle(ids)
    ids.sort(key=lambda i: -min(per_image, len(coco.objects.get(i) or ())))  # stable: the shuffle breaks ties
    return ids[:n]


def make_plan(coco: Coco | None, *, benchmarks, n_images: int, seed: int, splits, subsets: dict[str, set],
              pope_lines: dict[str, list[PopeLine]]) -> Plan:
    """The images and questions of a run. `subsets` (name -> image ids) each get their own draw of
    `n_images`; without subsets, one draw from every image with instances."""
    plan = Plan(file_names=dict(coco.file_names) if coco else {})
    groups = subsets or {ALL: None}
    file_ids = {name: i for i, name in plan.file_names.items()}
    chair: list[Any] = []
    pope_ids_per_group: dict[str, list[Any]] = {}
    for name, members in groups.items():
        got: dict[str, list[Any]] = {}
        if "chair" in benchmarks and coco is not None:
            pool = [i for i in coco.objects if members is None or i in members]
            got["chair"] = draw(pool, n_images, seed, "chair")
            chair.extend(got["chair"])
        if "pope" in benchmarks:
            if pope_lines:
                pool = {file_ids.get(ln.image, ln.image) for lines in pope_lines.values() for ln in lines}
                got["pope"] = draw([i for i in pool if members is None or i in members], n_images, seed, "pope")
            elif coco is not None:
                pool = [i for i in coco.objects if members is None or i in members]
                got["pope"] = draw_pope(coco, pool, n_images, seed)
            pope_ids_per_group[name] = got.get("pope", [])
        plan.subset_images[name] = got
    plan.chair_images = list(dict.fromkeys(chair))
    pope_ids = list(dict.fromkeys(i for ids in pope_ids_per_group.values() for i in ids))
    if "pope" in benchmarks:
        if pope_lines:
            wanted = set(pope_ids)
            for split, lines in pope_lines.items():
                for ln in lines:
                    image_id = file_ids.get(ln.image, ln.image)
                    if image_id in wanted:
                        plan.file_names.setdefault(image_id, ln.image)
                        plan.questions.append(Question(split, ln.question_id, image_id, ln.image, ln.object,
                                                       ln.label, ln.text))
        elif coco is not None:
            plan.questions = build_questions(coco, pope_ids, splits, seed)
    return plan
