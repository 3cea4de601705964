"""CHAIR-style object matching and attribute vocabularies, used by `filter` to find hallucinations.

Objects: the 80 COCO categories and their synonyms (`povid_cli/data/coco_synonyms.txt`: one category
per line, the category first, then its synonyms). Text is matched on lower-case words, longest phrase
first ("hot dog" is food, not a dog; "teddy bear" is not a bear), plurals folded crudely ("knives",
"buses", "people"). As in CHAIR (Rohrbach et al., 2018), an object is hallucinated when the rejected
answer mentions a category that the ground truth does not have.

Attributes and relations: a word diff between chosen and rejected whose changed words include a
number, colour, size, material, position, relation or negation word is a changed attribute.
"""

from __future__ import annotations

from functools import lru_cache
from povid_cli.core import coco

from stages.textsim import words

# Phrases that contain a synonym but name something else.
_NOT_OBJECTS = {
    ("toilet", "seat"): "toilet", ("baby", "carrot"): "carrot", ("orange", "juice"): None,
    ("bus", "stop"): None, ("train", "station"): None, ("car", "seat"): None, ("bike", "lane"): None,
}

_IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
              "knives": "knife", "geese": "goose", "oxen": "ox", "feet": "foot", "teeth": "tooth",
              "skis": "ski", "buses": "bus", "glasses": "glass", "benches": "bench", "sandwiches": "sandwich",
              "couches": "couch", "dishes": "dish", "boxes": "box", "ponies": "pony", "puppies": "puppy",
              "lorries": "lorry", "doggies": "doggie", "ladies": "lady", "babies": "baby"}

NUMBERS = set("""zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
sixteen seventeen eighteen nineteen twenty thirty forty fifty hundred hundreds thousand thousands dozen dozens
single couple pair several many few multiple both no none numerous lone once twice first second third
fourth fifth last""".split())
COLOURS = set("""red orange yellow green blue purple violet pink brown black white gray grey silver gold golden
beige tan cream maroon navy teal turquoise cyan magenta crimson dark light pale bright colorful colourful
striped spotted checkered plaid""".split())
SIZES = set("""big small large tiny huge giant little tall short long wide narrow thick thin heavy massive
miniature enormous high low deep shallow""".split())
MATERIALS = set("""wooden wood metal metallic steel iron glass plastic stone brick concrete paper cardboard
leather fabric cotton wool rubber ceramic marble chrome""".split())
STATES = set("""open closed empty full wet dry old new young broken clean dirty sunny cloudy rainy snowy foggy
calm rough busy crowded moving parked stationary lit dim day night dusk dawn morning evening noon
smiling frowning sitting standing lying walking running flying driving riding holding carrying eating
drinking reading playing sleeping looking facing pointing wearing hanging resting leaning floating""".split())
POSITIONS = set("""left right top bottom above below under underneath over behind front beside near next
inside outside between among across along around against toward towards away center centre middle
background foreground corner edge side upon onto into beneath atop far close""".split())
NEGATION = set("""no not yes never nothing nobody without neither nor isn't aren't doesn't don't""".split())

ATTRIBUTE_WORDS = NUMBERS | COLOURS | SIZES | MATERIALS | STATES | POSITIONS | NEGATION


@lru_cache(maxsize=1)
def synonyms() -> dict[tuple[str, ...], str]:
    """(word, ...) -> COCO category, from the bundled synonym list."""
    out: dict[tuple[str, ...], str] = {}
    for category, names in coco.categories():
        for n in names:
            out.setdefault(tuple(n.split()), category)
    for phrase, cat in _NOT_OBJECTS.items():
        out[phrase] = cat or ""
    return out


@lru_cache(maxsize=1)
def _first_words() -> dict[str, tuple[int, ...]]:
    """First word of every phrase -> the phrase lengths starting with it, longest first."""
    firsts: dict[str, set[int]] = {}
    for k in synonyms():
        firsts.setdefault(k[0], set()).add(len(k))
    return {w: tuple(sorted(n, reverse=True)) for w, n in firsts.items()}


def singular(w: str) -> str:
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def find_objects(text_or_words: str | list[str] | None) -> list[str]:
    """COCO categories mentioned in a text, in order of first mention (longest phrase wins)."""
    ws = words(text_or_words) if not isinstance(text_or_words, list) else text_or_words
    return list(_find(tuple(ws)))


@lru_cache(maxsize=65536)  # the chosen answer of an item is looked at once per candidate
def _find(ws: tuple[str, ...]) -> tuple[str, ...]:
    found: list[str] = []
    for _, _, cat in _mentions(ws):
        if cat not in found:
            found.append(cat)
    return tuple(found)


def object_mentions(text_or_words: str | list[str] | None) -> list[tuple[int, int, str]]:
    """Every COCO object mention as (first word, end word, category), repeats included, in text order.

    Word indices are into `words(text)`. CHAIR_i counts every mention (as the reference CHAIR code does),
    and the eval answers page marks these spans.
    """
    ws = words(text_or_words) if not isinstance(text_or_words, list) else text_or_words
    return list(_mentions(tuple(ws)))


@lru_cache(maxsize=65536)
def _mentions(ws: tuple[str, ...]) -> tuple[tuple[int, int, str], ...]:
    syn, firsts = synonyms(), _first_words()
    found: list[tuple[int, int, str]] = []
    i, n_words = 0, len(ws)
    while i < n_words:
        w = ws[i]
        cat, step = None, 1
        for n in firsts.get(w, ()):  # longest phrase first; one-word ones below
            if n == 1 or n > n_words - i:
                continue
            span = ws[i : i + n]
            cat = syn.get(span)
            if cat is None:
                cat = syn.get(span[:-1] + (singular(span[-1]),))
            if cat is not None:
                step = n
                break
        if cat is None:
            cat = _one_word(w)
        if cat:  # "" marks a phrase that contains a synonym but names no object ("bus stop")
            found.append((i, i + step, cat))
        i += step
    return tuple(found)


@lru_cache(maxsize=65536)  # a long answer repeats its words: look each one up once
def _one_word(w: str) -> str | None:
    syn = synonyms()
    cat = syn.get((w,))
    return syn.get((singular(w),)) if cat is None else cat


def canonical(objects: list[str] | None) -> set[str]:
    """Ground-truth object names (categories or synonyms) mapped to COCO categories."""
    out = set()
    for o in objects or []:
        cats = find_objects(o)
        out.update(cats or [o.strip().lower()])
    return out


def hallucinated_objects(rejected_words: list[str], chosen_words: list[str], objects: list[str] | None) -> list[str]:
    """Categories the rejected answer mentions that the ground truth does not have.

    Ground truth = the item's `objects` when known, plus whatever the chosen answer itself mentions:
    an object named in the reference answer is never a hallucination, even if `objects` misses it.
    """
    truth = canonical(objects) | set(find_objects(chosen_words))
    return [c for c in find_objects(rejected_words) if c not in truth]


def changed_attributes(changes: list[tuple[list[str], list[str]]], extra_words: set[str] = frozenset()) -> list[str]:
    """Edits ('yellow->red', '+not', '-two') whose words carry an attribute, relation, number or object."""
    out = []
    for removed, inserted in changes:
        if not inserted and not set(removed) & NEGATION:
            continue  # leaving something out is an omission, not a hallucination (dropping "not" is one)
        ws = set(removed) | set(inserted)
        hit = bool(ws & ATTRIBUTE_WORDS) or bool(ws & extra_words) or any(w.isdigit() for w in ws)
        if not hit:
            hit = bool(find_objects(removed)) != bool(find_objects(inserted)) or (
                set(find_objects(removed)) != set(find_objects(inserted)))
        if hit:
            if removed and inserted:
                out.append(f"{' '.join(removed)}->{' '.join(inserted)}")
            elif inserted:
                out.append("+" + " ".join(inserted))
            else:
                out.append("-" + " ".join(removed))
    return out
