"""The offline `rules` hallucinator: a few small, fluent edits of the POVID kinds, deterministic per seed.

    rejected, edits = hallucinate("A knife lies on a wooden table.", task="caption", prompt="Describe...",
                                  rng=random.Random("0:item"))
    # "A knife lies under a wooden table. A fork rests beside the knife."  (relation + object)

Kinds (the `type` of each edit):
- object: a co-occurring but absent COCO object gets a short sentence next to the object it goes with
  (knife -> fork, keyboard -> mouse), or a named object is swapped for a sibling (cat -> dog).
- attribute: a count ("one helmet" -> "two helmets", agreement included), a colour, a size or state
  (small/large, narrow/wide), a position (left/right, top/bottom, foreground/background).
- relation: what relates to what (on -> under, holding -> throwing, in front of -> behind).
- reasoning: yes/no answers and reasoning answers get their conclusion flipped, and the claims that
  support it turned around ("No, it is dusk: the sky is dark" -> "Yes, it is daytime: the sky is bright").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from povid_cli.core.errors import RowError
from stages.cooccurrence import (ADJECTIVE_USES, CO_OCCUR, FALLBACK_EXTRA, SCENE, SIBLINGS, TEMPLATES, article, display,
                           kind, mention_pattern, pluralize, synonyms, with_article)

from stages.rules_words import (COLOR_SWAP, COLORS, FLIPS, ISH, NUMBERS, PERSON_SWAP, POSITION, QUANTITIES,  # noqa: F401
                                 RELATIONS, SIZE_STATE, STOP)

VERSION = "rules-v1"


@dataclass
class Edit:
    src: str
    dst: str
    type: str

    def row(self) -> dict:
        return {"from": self.src, "to": self.dst, "type": self.type}


class Doc:
    """The text being edited, with the spans already changed protected from further edits."""

    def __init__(self, text: str):
        self.text = text
        self.done: list[tuple[int, int]] = []

    def free(self, s: int, e: int) -> bool:
        return all(e <= a or s >= b for a, b in self.done)

    def find(self, pattern: str, flags=re.IGNORECASE) -> list[re.Match]:
        return [m for m in re.finditer(pattern, self.text, flags) if self.free(m.start(), m.end())]

    def replace(self, s: int, e: int, new: str) -> None:
        old = self.text[s:e]
        if old[:1].isupper() and new:
            new = new[0].upper() + new[1:]
        delta = len(new) - (e - s)
        self.text = self.text[:s] + new + self.text[e:]
        self.done = [(a + delta, b + delta) if a >= e else (a, b) for a, b in self.done] + [(s, s + len(new))]
        self._fix_article(s)

    def _fix_article(self, s: int) -> None:
        """a/an before a replaced word follows the new word's sound ("an orange suit" -> "a blue suit")."""
        m = re.search(r"\b(a|an|A|An)\s+$", self.text[:s])
        nxt = re.match(r"[A-Za-z]+", self.text[s:])
        if not m or not nxt:
            return
        want = article(nxt.group(0))
        if m.group(1).lower() != want:
            want = want.capitalize() if m.group(1)[0].isupper() else want
            self.text = self.text[:m.start(1)] + want + self.text[m.end(1):]
            delta = len(want) - len(m.group(1))
            self.done = [(a + delta, b + delta) if a >= m.end(1) else (a, b) for a, b in self.done]

    def insert_sentence(self, after: int, sentence: str) -> None:
        """Insert a sentence after the one that contains position `after`."""
        m = re.compile(r"[.!?](?=\s|$)").search(self.text, after)
        if m is None:
            body = self.text.rstrip()
            pos, prefix = len(body), ("" if body.endswith((".", "!", "?")) else ".")
            self.text = body + prefix + " " + sentence
            self.done.append((pos + len(prefix) + 1, len(self.text)))
            return
        pos = m.end()
        self.text = self.text[:pos] + " " + sentence + self.text[pos:]
        delta = len(sentence) + 1
        self.done = [(a + delta, b + delta) if a >= pos else (a, b) for a, b in self.done] + [(pos + 1, pos + delta)]


def mentions(text: str) -> list[tuple[re.Match, str]]:
    """(match, COCO category) for each object the text names."""
    syn = synonyms()
    out = []
    for m in mention_pattern().finditer(text):
        word = m.group(0).lower()
        if word in ADJECTIVE_USES and re.match(r"[- ]+[a-z]+", text[m.end():]) \
                and not re.match(r"\s+(and|or|with|on|in|at|is|are|was|of|next|near|by|to)\b", text[m.end():]):
            continue  # "an orange flight suit", "a bus stop": a modifier, not the object
        out.append((m, syn[word]))
    # "a tabby cat": "tabby" and "cat" name one object; keep the head noun
    return [(m, c) for i, (m, c) in enumerate(out)
            if not (i + 1 < len(out) and out[i + 1][1] == c and text[m.end():out[i + 1][0].start()].strip() == "")]


# -- the edits --------------------------------------------------------------------------------------------
def add_object(doc: Doc, rng: random.Random, present: set[str]) -> Edit | None:
    found = [(m, c) for m, c in mentions(doc.text) if doc.free(m.start(), m.end())]
    anchors = [(m.end(), m.group(0).lower(), [x for x in CO_OCCUR[c] if x not in present]) for m, c in found]
    if not any(a[2] for a in anchors):  # no COCO object: go by scene words (a lake suggests a boat)
        anchors = [(m.end(), m.group(0).lower(), [x for x in SCENE[m.group(0).lower()] if x not in present])
                   for m in doc.find(r"\b(" + "|".join(SCENE) + r")\b")]
    anchors = [a for a in anchors if a[2]]
    if not anchors:
        return None
    end, word, candidates = rng.choice(anchors)
    cat = rng.choice(candidates)
    phrase = with_article(display(cat))
    k = kind(cat) + ("-sky" if kind(cat) == "flying" and word == "sky" else "")
    sentence = rng.choice(TEMPLATES[k]).format(X=phrase[0].upper() + phrase[1:], x=phrase, a=word)
    doc.done.append((end - len(word), end))  # the anchor stays as it is, or the new sentence would contradict it
    doc.insert_sentence(end, sentence)
    present.add(cat)
    return Edit("", sentence, "object")


def swap_object(doc: Doc, rng: random.Random, present: set[str]) -> Edit | None:
    options = []
    for m, c in mentions(doc.text):
        if not doc.free(m.start(), m.end()):
            continue
        word = m.group(0).lower()
        nxt = re.match(r"\s+([a-z]+)", doc.text[m.end():])
        if nxt and nxt.group(1) in synonyms():
            continue  # "tabby cat" after "cat" became "dog": "tabby" is not the noun to swap
        if word in PERSON_SWAP:
            options.append((m, PERSON_SWAP[word]))
            continue
        same = [x for x in SIBLINGS.get(c, []) if x not in present]
        if same:
            alt = display(rng.choice(same))
            plural = word != c and pluralize(c) == word or word.endswith("s") and not c.endswith("s")
            options.append((m, pluralize(alt) if plural else alt))
    if not options:
        return None
    m, new = rng.choice(options)
    old = m.group(0)
    doc.replace(m.start(), m.end(), new)
    return Edit(old, new, "object")


def _noun_phrase(text: str, pos: int) -> tuple[int, int] | None:
    """(start of the last word, end) of the up-to-3-word noun phrase that starts after `pos`."""
    last = None
    tok = re.compile(r"\s+([A-Za-z][a-z-]*)")
    for _ in range(3):
        t = tok.match(text, pos)
        if not t or t.group(1).lower() in STOP:
            break
        last, pos = (t.start(1), t.end(1)), t.end(1)
        if not re.match(r"\s+[A-Za-z]", text[pos:]):
            break  # punctuation or the end: the noun is the word just taken
    return last


def change_count(doc: Doc, rng: random.Random) -> Edit | None:
    cands = []
    for m in doc.find(r"\b(" + "|".join(NUMBERS[1:]) + r"|\d+)\b"):
        if re.search(r"\b(the|this|that|no|any|every|each)\s*$", doc.text[:m.start()], re.IGNORECASE):
            continue  # "the one that", "no one"
        noun = _noun_phrase(doc.text, m.end())
        if noun and doc.free(m.start(), noun[1]):
            cands.append((m, noun))
    cands += [(m, None) for m in doc.find(r"\b(" + "|".join(map(re.escape, QUANTITIES)) + r")\b")]
    if not cands:
        return None
    m, noun = rng.choice(cands)
    old = m.group(0)
    if noun is None:
        new = QUANTITIES[old.lower()]
        doc.replace(m.start(), m.end(), new)
        return Edit(old, new, "attribute")
    value = int(old) if old.isdigit() else NUMBERS.index(old.lower())
    new_value = rng.choice([v for v in range(max(2, value - 2), value + 4) if v not in (value, 0, 1)])
    new_num = str(new_value) if old.isdigit() or new_value >= len(NUMBERS) else NUMBERS[new_value]
    if value != 1:  # many -> other many: the noun stays plural
        doc.replace(m.start(), m.end(), new_num)
        return Edit(old, new_num, "attribute")
    # one -> many: plural noun, and the verbs that agree with it ("There is one X" / "one X is")
    t = doc.text
    head, src_start = t[:m.start()], m.start()
    there = re.search(r"\b([Tt]here)(?: is|'s| was)\s+$", head)
    if there:
        src_start = there.start()
        verb = "were" if head.rstrip().endswith("was") else "are"
        head = head[:there.start()] + there.group(1) + f" {verb} "
    mid = t[m.end():noun[0]] + pluralize(t[noun[0]:noun[1]])
    tail = t[noun[1]:]
    v = re.match(r"\s+(is|was|has)\b", tail)
    if v:
        tail = tail[:v.start(1)] + {"is": "are", "was": "were", "has": "have"}[v.group(1)] + tail[v.end(1):]
    src = t[src_start:noun[1]]
    dst = head[src_start:] + new_num + mid if there else new_num + mid
    if old[0].isupper():
        dst = dst[0].upper() + dst[1:]
    doc.text = t[:src_start] + dst + tail
    delta = len(doc.text) - len(t)
    doc.done = [(a + delta, b + delta) if a >= noun[1] else (a, b) for a, b in doc.done] + [(src_start, src_start + len(dst))]
    return Edit(src, dst, "attribute")


def change_color(doc: Doc, rng: random.Random, first: bool = False) -> Edit | None:
    mono = [(x.start(), x.end()) for x in re.finditer(r"black(?: and |-and-)white", doc.text, re.IGNORECASE)]
    cands = [m for m in doc.find(r"\b(" + "|".join(COLORS + list(ISH)) + r")\b")
             if not any(a <= m.start() < b for a, b in mono)]
    if not cands:
        return None
    m = cands[0] if first else rng.choice(cands)  # first: answers state the colour asked about first
    old = m.group(0)
    new = ISH.get(old.lower()) or rng.choice([c for c in COLOR_SWAP[old.lower()] if c not in doc.text.lower()]
                                              or COLOR_SWAP[old.lower()])
    doc.replace(m.start(), m.end(), new)
    return Edit(old, new, "attribute")


def _swap_words(doc: Doc, rng: random.Random, table: dict[str, str], kind: str) -> Edit | None:
    cands = doc.find(r"\b(" + "|".join(sorted(map(re.escape, table), key=len, reverse=True)) + r")\b")
    if not cands:
        return None
    m = rng.choice(cands)
    old = m.group(0)
    new = table[old.lower()]
    doc.replace(m.start(), m.end(), new)
    return Edit(old, new, kind)


def change_attribute(doc: Doc, rng: random.Random) -> Edit | None:
    ops = [change_count, change_color, lambda d, r: _swap_words(d, r, SIZE_STATE, "attribute"),
           lambda d, r: _swap_words(d, r, POSITION, "attribute")]
    rng.shuffle(ops)
    for op in ops:
        e = op(doc, rng)
        if e:
            return e
    return None


def change_relation(doc: Doc, rng: random.Random) -> Edit | None:
    cands = []
    for pat, new in RELATIONS:
        cands += [(m, new) for m in doc.find(r"\b" + pat + r"\b")
                  if not re.match(r"\s+(the|its|her|his)\s+(left|right|top|bottom|side|middle|center)\b", doc.text[m.end():])]
    # drop matches that sit inside a longer one ("in front of" vs "behind" are distinct, "on top of" vs "on")
    cands = [(m, n) for m, n in cands if not any(o is not m and o.start() <= m.start() and m.end() <= o.end()
                                                 and (o.end() - o.start()) > (m.end() - m.start()) for o, _ in cands)]
    if not cands:
        return None
    m, new = rng.choice(cands)
    old = m.group(0)
    doc.replace(m.start(), m.end(), new)
    return Edit(old, new, "relation")


def flip_reasoning(doc: Doc, rng: random.Random, max_edits: int = 3) -> list[Edit]:
    """Flip a yes/no answer and turn around up to `max_edits` claims that support it."""
    edits = []
    yn = re.match(r"\s*(yes|no)\b", doc.text, re.IGNORECASE)
    if yn:
        new = "No" if yn.group(1).lower() == "yes" else "Yes"
        old = yn.group(1)
        doc.replace(yn.start(1), yn.end(1), new if old[0].isupper() else new.lower())
        edits.append(Edit(old, new, "reasoning"))
    for pat, rep in FLIPS:
        if len(edits) >= max_edits + (1 if yn else 0):
            break
        for m in doc.find(r"\b" + pat + r"\b"):
            old = m.group(0)
            new = m.expand(rep)
            doc.replace(m.start(), m.end(), new)
            edits.append(Edit(old, new, "reasoning"))
            break
    if yn and len(edits) == 1:  # nothing to turn around: negate the first claim ("is" -> "is not")
        m = next(iter(doc.find(r"\b(is|are|was|were|does|do|can)\b")), None)
        if m is not None:
            old = m.group(0)
            doc.replace(m.start(), m.end(), old + " not")
            edits.append(Edit(old, old + " not", "reasoning"))
    return edits


REASONING_PROMPT = re.compile(r"\b(why|unusual|careful|should|explain|reason|how come|safe|dangerous)\b", re.IGNORECASE)


def is_yes_no(text: str) -> bool:
    return bool(re.match(r"\s*(yes|no)\b", text, re.IGNORECASE))


def focus(prompt: str):
    """The edit a question asks for first: a count for "how many", a colour for "what colour", ..."""
    p = (prompt or "").lower()
    if "how many" in p:
        return change_count
    if re.search(r"colou?r", p):
        return lambda d, r: change_color(d, r, first=True)
    if re.search(r"\b(where|which direction|which side|facing)\b", p):
        return lambda d, r: _swap_words(d, r, POSITION, "attribute")
    if re.search(r"\bwhat (animal|object|kind|type|vehicle|is|does)\b", p):
        return swap_object
    return None


def hallucinate(text: str, *, task: str = "caption", prompt: str = "", objects: list[str] | None = None,
                rng: random.Random, p_object: float = 0.8) -> tuple[str, list[Edit]]:
    """Rewrite `text` with 1-3 hallucinations; returns (rejected, edits)."""
    doc = Doc(text)
    present = {c for _, c in mentions(text)} | set(objects or [])
    budget = rng.choice([1, 2, 2, 3])
    edits: list[Edit] = []
    if is_yes_no(text) or task == "reasoning" or REASONING_PROMPT.search(prompt or ""):
        edits += flip_reasoning(doc, rng, max_edits=2)
    first = focus(prompt)
    if first is not None and not edits:
        e = first(doc, rng, present) if first is swap_object else first(doc, rng)
        if e:
            edits.append(e)
    kinds = {e.type for e in edits}
    # a flipped yes/no answer is the hallucination; an object next to what it now denies would contradict it
    if "object" not in kinds and not is_yes_no(text) and rng.random() < p_object:
        e = add_object(doc, rng, present)
        if e:
            edits.append(e)
    ops = [lambda: change_attribute(doc, rng), lambda: change_relation(doc, rng)]
    if not is_yes_no(text):
        ops.append(lambda: swap_object(doc, rng, present))
    rng.shuffle(ops)
    for op in ops:
        if sum(e.type != "reasoning" for e in edits) + any(e.type == "reasoning" for e in edits) >= budget:
            break
        e = op()
        if e:
            edits.append(e)
    if not edits or doc.text.strip().lower() == text.strip().lower():
        e = add_object(doc, rng, present)
        if e is None:  # nothing in the text to anchor to: a plausible extra all the same
            cat = next((c for c in FALLBACK_EXTRA if c not in present), "bird")
            sentence = f"{with_article(display(cat)).capitalize()} can be seen in the background."
            doc.insert_sentence(len(doc.text), sentence)
            e = Edit("", sentence, "object")
        edits.append(e)
    return doc.text, edits


class RulesHallucinator:
    """The `rules` backend of `hallucinate`: offline, no model, deterministic per (seed, item id, j)."""

    model = None
    prompts: tuple[str, ...] = ()  # no prompt: editing one must not re-run it
    batch_size = 64
    max_workers = None
    uses_api = False
    version = VERSION

    def __init__(self, config):
        self.config = config

    def setup(self) -> None:
        pass

    def rewrite(self, rows: list[dict]):
        """Per row: a list of (rejected, edits) (n of them), or the RowError that row failed with."""
        out = []
        for row in rows:
            answers: list = []
            for j in range(self.config.n):
                rng = random.Random(f"{self.config.seed}:{row['id']}:{j}")
                try:
                    rejected, edits = hallucinate(row["chosen"], task=row.get("task") or "", prompt=row.get("prompt") or "",
                                                  objects=row.get("objects"), rng=rng, p_object=self.config.p_object)
                except Exception as e:  # noqa: BLE001 - one odd answer must not take the batch down
                    answers.append(RowError(f"{type(e).__name__}: {e}", kind="error"))
                    continue
                answers.append((rejected, [e.row() for e in edits]))
            out.append(answers)
        return out, {}
