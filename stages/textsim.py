"""Word-level text comparison used by `filter` (scores) and `report` (highlighted word diff).

Tokenising, normalising, similarity, the word diff, degenerate repetition and refusal detection.
Answers of normal length are compared with difflib, as always (their scores never change); difflib is
quadratic, so long ones (over LONG words on a side) go through rapidfuzz instead: the similarity is the
bit-parallel LCS in C++ (exact), and the diff aligns content-defined chunks of words first (a chunk ends
at a word whose hash is 0 mod CHUNK, so an insertion shifts no chunk boundary) and then the words inside
the chunks that differ: near-linear for texts that are mostly the same, which hallucinated answers are.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_DISPLAY_TOKEN = re.compile(r"\S+\s*")


def words(text: str | None) -> list[str]:
    """Lower-case words without punctuation: what similarity and matching work on."""
    return _WORD.findall((text or "").lower())


def normalise(text: str | None) -> str:
    """Case, whitespace and punctuation folded away: 'A cat, sitting.' == 'a cat sitting'."""
    return " ".join(words(text))


LONG = 2000  # words: above this on either side, the long path
MID = 20000  # words: up to this (after the common prefix and suffix), rapidfuzz's word-level LCS directly
CHUNK = 16  # mean words per chunk beyond MID


def similarity(a: list[str], b: list[str]) -> float:
    """Word-level similarity in [0, 1]: 2 * matched words / total words."""
    if not a and not b:
        return 1.0
    if max(len(a), len(b)) <= LONG:
        return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
    from rapidfuzz.distance import Indel

    return Indel.normalized_similarity(a, b)


def opcodes(a: list, b: list) -> list[tuple[str, int, int, int, int]]:
    """difflib-style opcodes (equal / replace / delete / insert) turning sequence a into b."""
    if max(len(a), len(b)) <= LONG:
        return difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    p = 0  # common prefix and suffix first: a hallucinated answer is mostly its original
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    q = 0
    while q < min(len(a), len(b)) - p and a[-1 - q] == b[-1 - q]:
        q += 1
    ma, mb = a[p : len(a) - q], b[p : len(b) - q]
    if max(len(ma), len(mb)) <= LONG:
        inner = difflib.SequenceMatcher(None, ma, mb, autojunk=False).get_opcodes() if ma or mb else []
    elif max(len(ma), len(mb)) <= MID:
        from rapidfuzz.distance import Indel

        inner = _merged(Indel.opcodes(ma, mb))
    else:
        inner = _chunked_opcodes(ma, mb)
    ops = [("equal", 0, p, 0, p)] + [(t, i1 + p, i2 + p, j1 + p, j2 + p) for t, i1, i2, j1, j2 in inner]
    ops.append(("equal", len(a) - q, len(a), len(b) - q, len(b)))
    return _merged(ops)


def _chunked_opcodes(a: list, b: list) -> list[tuple[str, int, int, int, int]]:
    from rapidfuzz.distance import Indel

    ca, cb = _chunks(a), _chunks(b)
    ids: dict[tuple, int] = {}
    ua = [ids.setdefault(tuple(a[i:j]), len(ids)) for i, j in ca]
    ub = [ids.setdefault(tuple(b[i:j]), len(ids)) for i, j in cb]
    out: list[tuple[str, int, int, int, int]] = []
    for op in _merged(Indel.opcodes(ua, ub)):
        tag, i1, i2, j1, j2 = op
        wa1, wa2 = (ca[i1][0], ca[i2 - 1][1]) if i2 > i1 else ((ca[i1][0],) * 2 if i1 < len(ca) else (len(a),) * 2)
        wb1, wb2 = (cb[j1][0], cb[j2 - 1][1]) if j2 > j1 else ((cb[j1][0],) * 2 if j1 < len(cb) else (len(b),) * 2)
        if tag == "equal":
            out.append(("equal", wa1, wa2, wb1, wb2))
        elif (wa2 - wa1) * (wb2 - wb1) <= LONG * LONG:  # words of the chunks that differ
            out += [(t, wa1 + x1, wa1 + x2, wb1 + y1, wb1 + y2)
                    for t, x1, x2, y1, y2 in difflib.SequenceMatcher(None, a[wa1:wa2], b[wb1:wb2], autojunk=False).get_opcodes()]
        else:  # long runs that share nothing: one replaced span
            out.append(("replace" if wa2 > wa1 and wb2 > wb1 else "delete" if wa2 > wa1 else "insert", wa1, wa2, wb1, wb2))
    return _merged(out)


def _chunks(ws: list[str]) -> list[tuple[int, int]]:
    """[start, end) of content-defined chunks: a chunk ends after a word whose hash is 0 mod CHUNK."""
    import zlib

    out, start = [], 0
    for i, w in enumerate(ws):
        if zlib.crc32(w.encode()) % CHUNK == 0:
            out.append((start, i + 1))
            start = i + 1
    if start < len(ws):
        out.append((start, len(ws)))
    return out


def _merged(ops) -> list[tuple[str, int, int, int, int]]:
    """Adjacent non-equal opcodes as one span (rapidfuzz's Indel gives a delete and an insert where difflib
    gives one replace), empty ones dropped."""
    out: list[tuple[str, int, int, int, int]] = []
    for op in ops:
        tag, i1, i2, j1, j2 = (op.tag, op.src_start, op.src_end, op.dest_start, op.dest_end) if hasattr(op, "tag") else op
        if i1 == i2 and j1 == j2:
            continue
        if tag != "equal" and out and out[-1][0] != "equal":
            _, p1, _, q1, _ = out.pop()
            i1, j1 = p1, q1
            tag = "replace" if i2 > i1 and j2 > j1 else "delete" if i2 > i1 else "insert"
        elif tag == "equal" and out and out[-1][0] == "equal":
            _, p1, _, q1, _ = out.pop()
            i1, j1 = p1, q1
        out.append((tag, i1, i2, j1, j2))
    return out


@dataclass
class WordDiff:
    """The word-level edit script from `a` (chosen) to `b` (rejected)."""

    ops: list[tuple[str, int, int, int, int]]  # difflib-style opcodes over words
    a: list[str]
    b: list[str]

    @property
    def ratio(self) -> float:
        if max(len(self.a), len(self.b)) > LONG:
            return similarity(self.a, self.b)  # exact LCS; the long-path opcodes are a near-minimal script
        if not self.a and not self.b:
            return 1.0
        matched = sum(i2 - i1 for tag, i1, i2, _, _ in self.ops if tag == "equal")
        return 2.0 * matched / (len(self.a) + len(self.b))

    @property
    def n_edits(self) -> int:
        """Contiguous changed spans (one swapped word = 1 edit)."""
        return sum(1 for op in self.ops if op[0] != "equal")

    def changes(self) -> list[tuple[list[str], list[str]]]:
        """(removed words, inserted words) per edit."""
        return [(self.a[i1:i2], self.b[j1:j2]) for tag, i1, i2, j1, j2 in self.ops if tag != "equal"]


def word_diff(a: list[str], b: list[str]) -> WordDiff:
    return WordDiff(opcodes(a, b), a, b)


def display_diff(chosen: str, rejected: str) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """Both texts as (segment, changed) runs for highlighting; whitespace and punctuation are kept.

    Tokens are compared on their normalised form, so 'cat,' and 'cat.' count as the same word.
    """
    ta, tb = _DISPLAY_TOKEN.findall(chosen or ""), _DISPLAY_TOKEN.findall(rejected or "")
    lead_a = (chosen or "")[: len(chosen or "") - len((chosen or "").lstrip())]
    lead_b = (rejected or "")[: len(rejected or "") - len((rejected or "").lstrip())]
    ka, kb = [normalise(t) or t.strip() for t in ta], [normalise(t) or t.strip() for t in tb]
    out_a: list[tuple[str, bool]] = [(lead_a, False)] if lead_a else []
    out_b: list[tuple[str, bool]] = [(lead_b, False)] if lead_b else []
    for tag, i1, i2, j1, j2 in opcodes(ka, kb):
        changed = tag != "equal"
        if i2 > i1:
            out_a.append(("".join(ta[i1:i2]), changed))
        if j2 > j1:
            out_b.append(("".join(tb[j1:j2]), changed))
    return out_a, out_b


def repetition(ws: list[str], n: int = 3) -> float:
    """Share of repeated word n-grams (0 = none; near 1 = 'the cat the cat the cat ...').

    Also catches a single token looping ('no no no no no ...'). Short texts score 0.
    """
    if len(ws) < 2 * n + 2:
        return 0.0
    grams = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


# Phrases that mean the model declined or could not see the image. Matched on lower-case words with
# apostrophes dropped, so "I'm" / "Im" and "can't" / "cant" are the same.
REFUSAL_PATTERNS = [
    r"^(im |i am )?sorry\b",
    r"\bi (cannot|cant|can not|am unable to|m unable to|am not able to|m not able to|do not|dont) "
    r"(see|view|access|determine|tell|help|provide|assist|identify|describe|answer|open|process|comply)\b",
    r"\bas an ai\b",
    r"\bim an ai\b",
    r"\b(ai|language) model\b",
    r"\bunable to (see|view|access|determine|process|open|analy[sz]e) (the |this |any |an )?(image|picture|photo)",
    r"\b(no|not an?|without an?) (image|picture|photo) (was |is |has been )?(provided|attached|shared|uploaded)",
    r"\bi (wont|will not|cant|cannot) (help|assist|comply)\b",
]
_REFUSAL = re.compile("|".join(f"(?:{p})" for p in REFUSAL_PATTERNS))


def is_refusal(text: str | None) -> bool:
    t = " ".join(re.findall(r"[a-z0-9]+", (text or "").lower().replace("'", "").replace("\u2019", "")))
    return bool(_REFUSAL.search(t))
