"""Word-level text comparison used by `filter` (scores) and `report` (highlighted word diff).

Everything here is pure Python on short answers: tokenising, normalising, similarity, the word diff,
degenerate repetition and refusal detection.
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


def similarity(a: list[str], b: list[str]) -> float:
    """Word-level similarity in [0, 1] (difflib ratio: 2 * matched words / total words)."""
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


@dataclass
class WordDiff:
    """The word-level edit script from `a` (chosen) to `b` (rejected)."""

    ops: list[tuple[str, int, int, int, int]]  # difflib opcodes over words
    a: list[str]
    b: list[str]

    @property
    def ratio(self) -> float:
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
    return WordDiff(difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes(), a, b)


def display_diff(chosen: str, rejected: str) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """Both texts as (segment, changed) runs for highlighting; whitespace and punctuation are kept.

    Tokens are compared on their normalised form, so 'cat,' and 'cat.' count as the same word.
    """
    ta, tb = _DISPLAY_TOKEN.findall(chosen or ""), _DISPLAY_TOKEN.findall(rejected or "")
    lead_a = (chosen or "")[: len(chosen or "") - len((chosen or "").lstrip())]
    lead_b = (rejected or "")[: len(rejected or "") - len((rejected or "").lstrip())]
    ka, kb = [normalise(t) or t.strip() for t in ta], [normalise(t) or t.strip() for t in tb]
    sm = difflib.SequenceMatcher(None, ka, kb, autojunk=False)
    out_a: list[tuple[str, bool]] = [(lead_a, False)] if lead_a else []
    out_b: list[tuple[str, bool]] = [(lead_b, False)] if lead_b else []
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
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
