"""The offline `rules` corrector: cut the sentences (or trailing clauses) that name an absent COCO object.

    truth = ground_truth({"objects": ["person", "horse"], "chosen": "A man rides a horse."})
    correct("A man rides a horse, and a dog runs beside them. The sky is blue.", truth)
    # ("A man rides a horse. The sky is blue.",
    #  [{"from": ", and a dog runs beside them", "to": "", "reason": "names an absent object: dog"}])

Truth = the item's `objects` and the objects its chosen answer names (stages/chair.py: COCO categories
and synonyms, as filter and CHAIR match them). A mention right after a negation ("no dogs", "isn't a
cat", "without people") says the object is absent, which is true: it is left alone.

What is cut, and why the rest stays verbatim: every character outside a cut span is the original's,
whitespace and punctuation included. A sentence whose first clause names an absent object goes whole.
A later clause goes alone when it is a coordinate or attached clause (after "; " or ", and|but|while|
whereas|which|where|who|with|..."), and a clause attached to a cut one ("..., which is black") goes with
it. When the cut would leave a broken list ("a cake, a cup, and a fork" -> "a cake, a cup") the whole
sentence goes: when unsure, the sentence.
"""

from __future__ import annotations

import re

from stages import chair
from stages.textsim import words

VERSION = "correct-rules-v1"

_NEGATION = {"no", "not", "without", "never", "neither", "nor", "none", "isn't", "aren't", "wasn't", "weren't",
             "doesn't", "don't", "cannot", "can't", "nothing", "absent", "lacks", "lack"}
_NEG_WINDOW = 3  # words before a mention that may negate it ("there are no red dogs")
# The end of a sentence: terminal punctuation (and closing quotes/brackets) before whitespace, or a line break.
_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)|\n")
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "approx"}
_LIST_MARK = re.compile(r"\s*(\d+[.)]|[-*\u2022])\s*")  # "1." or "-" opening a list line: not a sentence
# Where a trailing clause starts (the delimiter belongs to the clause it opens).
_CONJ = r"and|but|while|whereas|yet|so|which|where|who|whose|with|including|as well as|along with|alongside|plus"
_CLAUSE = re.compile(rf"\s*;\s*|,\s+(?=(?:{_CONJ})\b)", re.IGNORECASE)
_ATTACHED = re.compile(r"[,;]?\s*(which|where|who|whose|with|including)\b", re.IGNORECASE)
_LIST_TAIL = re.compile(r",\s+(and|or)\b", re.IGNORECASE)


def ground_truth(item: dict) -> set[str] | None:
    """COCO categories the item has: its `objects` and those its chosen answer names; None when it has
    neither (then nothing can be told absent)."""
    objects = item.get("objects")
    chosen = (item.get("chosen") or "") if item.get("has_answer") is not False else ""
    if objects is None and not chosen.strip():
        return None
    return chair.canonical(objects) | set(chair.find_objects(chosen))


def absent_objects(text: str, truth: set[str]) -> list[str]:
    """Categories `text` names that are not in `truth`, in order, leaving out negated mentions."""
    ws = words(text)
    out: list[str] = []
    for i, _, cat in chair.object_mentions(ws):
        if cat in truth or cat in out or set(ws[max(0, i - _NEG_WINDOW):i]) & _NEGATION:
            continue
        out.append(cat)
    return out


def sentences(text: str) -> list[tuple[int, int, int]]:
    """(start, body end, end) of every sentence: text[start:body_end] is the sentence with its terminal
    punctuation, text[body_end:end] the whitespace after it. Text before the first one is whitespace."""
    out: list[tuple[int, int, int]] = []
    start = len(text) - len(text.lstrip())
    pos = start
    while start < len(text):
        m = _END.search(text, pos)
        body_end = m.end() if m else len(text)
        if m and m.group() != "\n":
            word = re.search(r"([\w.]+)[.!?]+$", text[start:m.start() + 1])
            if (word and word.group(1).lower().rstrip(".") in _ABBREV and m.group() == ".") \
                    or _LIST_MARK.fullmatch(text[start:body_end]):
                pos = body_end  # "Mr." or a list number: the sentence goes on
                continue
        if m and m.group() == "\n":
            body_end = m.start()
        end = body_end
        while end < len(text) and text[end].isspace():
            end += 1
        if text[start:body_end].strip():
            out.append((start, body_end, end))
        start = pos = end
    return out


def _clauses(body: str) -> list[tuple[int, int]]:
    """(start, end) of the clauses of one sentence body (terminal punctuation left out of the last)."""
    stop = len(body.rstrip().rstrip("\"')]").rstrip(".!?"))
    cuts = [m.start() for m in _CLAUSE.finditer(body, 0, stop) if m.start() > 0]
    bounds = [0] + cuts + [stop]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if a < b]


def _cut_clauses(body: str, truth: set[str]) -> tuple[list[tuple[int, int]], list[list[str]]] | None:
    """Spans (in body) of the trailing clauses to cut and the absent objects of each; None: cut the
    whole sentence (its first clause names an absent object, or a clause cut is not safe)."""
    clauses = _clauses(body)
    found = [absent_objects(body[a:b], truth) for a, b in clauses]
    if found[0]:
        return None
    cut = [bool(f) for f in found]
    for i in range(1, len(clauses)):  # "..., which is black" goes with the clause it is attached to
        if not cut[i] and cut[i - 1] and _ATTACHED.match(body[clauses[i][0]:clauses[i][1]]):
            cut[i] = True
    spans, why = [], []
    for i, (a, b) in enumerate(clauses):
        if not cut[i]:
            continue
        kept_before = body[clauses[i - 1][0]:clauses[i - 1][1]] if i else ""
        if _LIST_TAIL.match(body[a:b]) and "," in kept_before:
            return None  # the "and" closes a list: cutting it leaves "a cake, a cup" (unsure: the sentence)
        spans.append((a, b))
        why.append(found[i])
    return spans, why


def _reason(objects: list[str]) -> str:
    if not objects:
        return "attached to a cut clause"
    return f"names {'an absent object' if len(objects) == 1 else 'absent objects'}: {', '.join(objects)}"


def correct(text: str, truth: set[str]) -> tuple[str, list[dict]]:
    """(corrected text, changes): every cut is a change {from: the exact text cut, to: "", reason}."""
    sents = sentences(text)
    keep: list[str] = []  # kept sentences with their trailing whitespace
    changes: list[dict] = []
    for start, body_end, end in sents:
        body = text[start:body_end]
        whole = absent_objects(body, truth)
        if not whole:
            keep.append(text[start:end])
            continue
        plan = _cut_clauses(body, truth)
        if plan is None:
            changes.append({"from": body, "to": "", "reason": _reason(whole)})
            continue
        spans, why = plan
        out, pos = [], 0
        for (a, b), objs in zip(spans, why):
            out.append(body[pos:a])
            changes.append({"from": body[a:b], "to": "", "reason": _reason(objs)})
            pos = b
        out.append(body[pos:])
        keep.append("".join(out) + text[body_end:end])
    if not changes:
        return text, []
    lead = text[: sents[0][0]] if sents else ""
    kept = lead + "".join(keep)
    trail = text[len(text.rstrip()):]
    return (kept.rstrip() + trail if kept.strip() else ""), changes


class RulesCorrector:
    """The backend `correct` looks up as "rules": offline, deterministic, no model."""

    prompts: tuple[str, ...] = ()
    batch_size = 256
    max_workers = None
    uses_api = False
    model = None
    version = VERSION

    def __init__(self, config):
        self.config = config

    def setup(self) -> None:
        pass

    def correct(self, jobs: list[dict]) -> tuple[list, dict]:
        """Per job ({item, original, truth}): (corrected, changes)."""
        return [correct(j["original"], j["truth"]) for j in jobs], {}
