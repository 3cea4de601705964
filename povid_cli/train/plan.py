"""Which stages `povid train` runs, on which pairs: the schedule (`--schedule povid|mixed`) and the curriculum
(`--curriculum K[:score=NAME]`, Curry-DPO).

Input: pair rows (povid_cli/train/data.py), the TrainConfig. Output: `StagePlan`s in training order; the
stage loop (povid_cli/train/trainer.py) starts each stage from the previous one's weights and uses that
model as its DPO reference.

- `--schedule povid`: stage 1 = the `text` pairs (3 epochs), stage 2 = the image side (1 epoch): `image` pairs and
  `contrast` pairs (filter --kinds ...,contrast). Data with only one of the two sides runs the stage it has and
  says in one line why the other was skipped.
- `--schedule mixed`: one stage over the selected `--kind`.
- `--curriculum K`: each of those stages is split into K sub-stages of (nearly) equal size, ordered from easy to
  hard by a difficulty score (default: `similarity`, the word-level similarity of chosen and rejected: the more
  alike the two answers, the subtler the hallucination, the harder the pair). Each sub-stage keeps its kind's
  epochs, so every pair is seen as often as without a curriculum and the total steps are the same; under
  `--schedule povid` the curriculum runs within each kind (text easy -> hard, then image easy -> hard).
  `score=NAME` ranks by another pair column (higher = harder; `score=-NAME`: lower = harder; a list column
  counts its items), e.g. `--curriculum 3:score=-n_edits` (fewer edits = harder).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from povid_cli.core.errors import PovidError, UsageError

log = logging.getLogger("povid.train")

DEFAULT_SCORE = "similarity"
# what makes each kind of pair, for the line that says a --schedule povid stage was skipped
MAKES = {"text": "`povid hallucinate DATA` (synth runs it by default)",
         "image": "`povid distort DATA` then `povid sample DATA --model M` (or `povid synth ... --vlm M`), or "
                  "`povid distort DATA` then `povid filter DATA --kinds text,image,contrast`"}
# the pair kinds each --schedule povid stage trains on
STAGE_KINDS = {"text": ("text",), "image": ("image", "contrast")}


@dataclass
class StagePlan:
    name: str           # text | image | all, plus -i with --curriculum (text-1, text-2, ...)
    kind: str
    epochs: float
    rows: list = field(repr=False, default_factory=list)
    difficulty: tuple[float, float] | None = None  # the (easiest, hardest) score of a curriculum stage

    def digest(self) -> str:
        """What the stage trains on (its pairs' texts, in order): --resume checks a finished stage against it."""
        h = hashlib.sha256()
        for r in self.rows:
            for key in ("prompt", "chosen", "rejected"):
                h.update(repr(r.get(key)).encode())
        return h.hexdigest()[:16]


# -- the schedule --------------------------------------------------------------------------------------
def plan_stages(schedule: str, kind: str, epochs: float | None, rows: list[dict], source: str,
                echo: Callable[[str], None] = print) -> list[StagePlan]:
    from povid_cli.train.data import select_kind

    if schedule == "mixed":
        return [StagePlan("all" if kind == "all" else kind, kind, epochs or 1, select_kind(rows, kind, source))]
    kinds = ("text", "image") if kind == "all" else (kind,)
    have = {r["kind"] for r in rows}

    def stage_kinds(k: str) -> tuple[str, ...]:
        return STAGE_KINDS[k] if kind == "all" else (k,)

    if kind == "all" and have & {x for k in kinds for x in stage_kinds(k)}:  # run the stages the data has
        for i, k in enumerate(kinds):
            if not have & set(stage_kinds(k)):
                echo(f"no {k} pairs in {source}: stage {i + 1} ({k} pairs) skipped; {k} pairs come from {MAKES[k]}")
        kinds = tuple(k for k in kinds if have & set(stage_kinds(k)))
    plans = []
    for k in kinds:
        plans.append(StagePlan(k, k, epochs or (3 if k == "text" else 1), select_kind(rows, stage_kinds(k), source)))
    return plans


def stage_dirs(out: Path, plans: list[StagePlan]) -> list[Path]:
    return [out / "final" if i == len(plans) - 1 else out / f"stage{i + 1}-{p.name}" for i, p in enumerate(plans)]


# -- the curriculum ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Curriculum:
    stages: int
    score: str = DEFAULT_SCORE
    higher_is_harder: bool = True

    def describe(self) -> str:
        return f"{self.stages} stages, easy to hard by {'' if self.higher_is_harder else '-'}{self.score}"


_SPEC = re.compile(r"^\s*(\d+)\s*(?::\s*score\s*=\s*(-?)([A-Za-z_][A-Za-z0-9_]*)\s*)?$")


def parse_curriculum(text: str | None) -> Curriculum | None:
    """'3' or '3:score=similarity' or '3:score=-n_edits' -> Curriculum; None -> None."""
    if text is None:
        return None
    m = _SPEC.match(text)
    if not m:
        raise UsageError(f"--curriculum {text!r}: expected K or K:score=NAME (e.g. 3, 3:score=-n_edits)")
    k = int(m.group(1))
    if k < 2:
        raise UsageError(f"--curriculum {text!r}: K must be at least 2 (one stage is no curriculum)")
    return Curriculum(k, m.group(3) or DEFAULT_SCORE, m.group(2) != "-")


def _answer(messages) -> str:
    if isinstance(messages, str):
        return messages
    return " ".join(m["content"] for m in messages if m.get("role") == "assistant")


def similarity(row: dict) -> float:
    """filter's `similarity` score (stages/textsim.py: word-level, chosen vs rejected), for data without it."""
    from stages.textsim import word_diff, words

    return round(word_diff(words(_answer(row["chosen"])), words(_answer(row["rejected"]))).ratio, 4)


def difficulty(rows: list[dict], cur: Curriculum, source: str) -> list[float]:
    """Each row's score (higher = harder once the direction is applied). `similarity` is computed from the
    texts where the data does not carry it; any other score must be a column of the data."""
    out, missing = [], 0
    for r in rows:
        v = r.get(cur.score)
        if isinstance(v, (list, tuple)):
            v = len(v)
        if v is None and cur.score == DEFAULT_SCORE:
            v = similarity(r)
        if v is None or isinstance(v, (str, bytes, dict)):
            missing += 1
            continue
        out.append(float(v) if cur.higher_is_harder else -float(v))
    if missing:
        raise PovidError(f"--curriculum score={cur.score}: {missing} of {len(rows)} pairs in {source} have no numeric "
                         f"{cur.score} (povid pairs carry similarity, n_edits, hallucinated_objects, ...; "
                         "TRL Parquet: name one of its columns)")
    return out


def split_curriculum(plan: StagePlan, cur: Curriculum, source: str) -> list[StagePlan]:
    """One stage -> K stages of (nearly) equal size, easy to hard; ties keep the data's order."""
    n = len(plan.rows)
    if n < cur.stages:
        raise PovidError(f"--curriculum {cur.stages}: the {plan.name} stage has only {n} training pair(s); "
                         "use a smaller K")
    scores = difficulty(plan.rows, cur, source)
    order = sorted(range(n), key=lambda i: scores[i])
    sign = 1.0 if cur.higher_is_harder else -1.0
    out, start = [], 0
    for i in range(cur.stages):
        size = n // cur.stages + (1 if i < n % cur.stages else 0)
        idx = order[start:start + size]
        start += size
        out.append(StagePlan(f"{plan.name}-{i + 1}", plan.kind, plan.epochs, [plan.rows[j] for j in idx],
                             (sign * scores[idx[0]], sign * scores[idx[-1]])))
    return out


def expand(plans: list[StagePlan], cur: Curriculum | None, source: str) -> list[StagePlan]:
    """Every stage split into its curriculum stages (unchanged without a curriculum)."""
    if cur is None:
        return plans
    return [sub for plan in plans for sub in split_curriculum(plan, cur, source)]


# -- everything before the stage loop ------------------------------------------------------------------
def prepare(cfg, processor, echo: Callable[[str], None]) -> tuple[list[StagePlan], dict[str, list[dict]], list[str]]:
    """Read the pairs (with their weights and curriculum score), plan the stages, fit the token budget, hold out
    each kind's eval pairs, then split the stages by the curriculum (so the held-out pairs do not depend on it).
    Returns (stages, eval rows per kind, token-budget lines)."""
    from povid_cli.train.data import fit_to_budget, read_pairs, split_eval

    cur = parse_curriculum(cfg.curriculum)
    extra = ((cur.score,) if cur else ()) + (() if cfg.weight_column else ("weight_score",))
    rows = read_pairs(cfg.data, extra, cfg.weight_column)
    if cfg.loss == "mdpo":
        from povid_cli.train.data import attach_conditional_images

        n = attach_conditional_images(rows)
        others = sum(1 for r in rows if not r.get("rejected_images")) - n
        echo(f"mdpo: {n} pairs take their item's contrast image as the corrupted image, {others} mDPO's random crop"
             + (f"; {len(rows) - n - others} contrast pairs train as their own conditional preference"
                if len(rows) - n - others else ""))
    if cfg.weight_column:
        ws = [r["weight"] for r in rows]
        echo(f"pair weights from {cfg.weight_column}: {min(ws):g}..{max(ws):g}, mean {sum(ws) / len(ws):.3g}"
             + (f", {sum(1 for w in ws if w == 0)} at 0 (no gradient)" if 0 in ws else ""))
    elif any(r.get("weight_score") is not None for r in rows):
        echo("the pairs carry weight scores (filter --weight-by); --weight-column weight trains with them")
    plans = plan_stages(cfg.schedule, cfg.kind, cfg.epochs, rows, cfg.data, echo)
    for plan in plans:  # --limit N: the first N pairs of each stage
        plan.rows = plan.rows[: cfg.limit] if cfg.limit else plan.rows
    budget_lines = []
    echo(f"checking the token budget of {sum(len(p.rows) for p in plans)} pairs with {type(processor).__name__}")
    for plan in plans:
        plan.rows, budget = fit_to_budget(plan.rows, processor, cfg.max_length)
        budget_lines.append(f"{plan.name}: {budget.line()}")
        echo(f"{plan.name} pairs: {budget.line()}")
        for ex in budget.skipped_examples:
            log.info("skipped (%s)", ex)
        if not plan.rows:
            raise PovidError(f"no {plan.name} pair fits in --max-length {cfg.max_length} "
                             f"(the shortest needs more); raise --max-length")
    evals: dict[str, list[dict]] = {}
    for plan in plans:  # every stage is evaluated on each kind's held-out pairs
        plan.rows, held = split_eval(plan.rows, cfg.eval_fraction, cfg.seed)
        for kind, ev in held.items():
            evals.setdefault(kind, []).extend(ev)
    if cur:
        echo(f"curriculum: {cur.describe()}" + (", within each kind" if len(plans) > 1 else ""))
    return expand(plans, cur, cfg.data), evals, budget_lines
