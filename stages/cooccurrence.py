"""COCO object knowledge for the `rules` hallucinator: synonyms, what co-occurs with what, how to say it.

`CO_OCCUR[cat]` lists categories that often appear in COCO images together with `cat` (the objects
POVID-style rewrites add: a fork next to a knife, a mouse beside a keyboard). Every one of the 80
categories has an entry. `SCENE` does the same for common non-COCO scene words (a lake suggests a boat),
for answers that name no COCO object; `NON_COCO` gives plausible extras for scenes COCO knows nothing
about (space, medical images).
"""

from __future__ import annotations

import re
from functools import lru_cache
from povid_cli.core import coco

CO_OCCUR: dict[str, list[str]] = {
    "person": ["dog", "backpack", "handbag", "umbrella", "cell phone", "bicycle"],
    "bicycle": ["person", "backpack", "car", "bench"],
    "car": ["traffic light", "truck", "bus", "person", "stop sign", "fire hydrant"],
    "motorcycle": ["car", "truck", "person", "bicycle"],
    "airplane": ["truck", "person", "car", "bird"],
    "bus": ["car", "traffic light", "person", "truck"],
    "train": ["traffic light", "person", "truck", "bench"],
    "truck": ["car", "traffic light", "bus", "stop sign"],
    "boat": ["person", "bird", "umbrella", "car"],
    "traffic light": ["car", "bus", "stop sign", "truck"],
    "fire hydrant": ["car", "stop sign", "dog", "parking meter"],
    "stop sign": ["car", "traffic light", "fire hydrant", "truck"],
    "parking meter": ["car", "fire hydrant", "bicycle", "truck"],
    "bench": ["person", "bird", "potted plant", "dog"],
    "bird": ["boat", "bench", "kite", "person"],
    "cat": ["couch", "bed", "remote", "laptop", "bowl"],
    "dog": ["frisbee", "sports ball", "couch", "person", "bowl"],
    "horse": ["person", "cow", "dog", "truck"],
    "sheep": ["dog", "cow", "person", "truck"],
    "cow": ["sheep", "horse", "dog", "truck"],
    "elephant": ["person", "truck", "bird", "giraffe"],
    "bear": ["bird", "person", "bench"],
    "zebra": ["giraffe", "elephant", "bird"],
    "giraffe": ["zebra", "elephant", "bird"],
    "backpack": ["person", "suitcase", "bicycle", "handbag"],
    "umbrella": ["person", "handbag", "bench", "chair"],
    "handbag": ["person", "umbrella", "cell phone", "backpack"],
    "tie": ["person", "cell phone", "wine glass", "chair"],
    "suitcase": ["backpack", "handbag", "person", "bed"],
    "frisbee": ["dog", "person", "sports ball", "backpack"],
    "skis": ["person", "backpack", "snowboard"],
    "snowboard": ["person", "skis", "backpack"],
    "sports ball": ["person", "baseball glove", "tennis racket", "dog"],
    "kite": ["person", "bird", "umbrella", "boat"],
    "baseball bat": ["baseball glove", "sports ball", "person", "bench"],
    "baseball glove": ["baseball bat", "sports ball", "person", "bench"],
    "skateboard": ["person", "backpack", "bicycle", "bench"],
    "surfboard": ["person", "boat", "umbrella", "bird"],
    "tennis racket": ["sports ball", "person", "bench", "bottle"],
    "bottle": ["cup", "wine glass", "bowl", "sink"],
    "wine glass": ["bottle", "fork", "knife", "dining table"],
    "cup": ["spoon", "bowl", "bottle", "donut", "cake"],
    "fork": ["knife", "spoon", "wine glass", "bowl"],
    "knife": ["fork", "spoon", "bowl", "sandwich"],
    "spoon": ["fork", "bowl", "cup", "knife"],
    "bowl": ["spoon", "cup", "fork", "banana"],
    "banana": ["apple", "orange", "bowl", "knife"],
    "apple": ["banana", "orange", "bowl", "knife"],
    "sandwich": ["knife", "fork", "cup", "bottle"],
    "orange": ["banana", "apple", "bowl", "knife"],
    "broccoli": ["carrot", "fork", "bowl", "knife"],
    "carrot": ["broccoli", "knife", "bowl", "fork"],
    "hot dog": ["bottle", "sandwich", "cup", "pizza"],
    "pizza": ["knife", "fork", "wine glass", "bottle"],
    "donut": ["cup", "cake", "knife", "bottle"],
    "cake": ["fork", "knife", "cup", "wine glass"],
    "chair": ["dining table", "potted plant", "couch", "cup", "book"],
    "couch": ["remote", "tv", "potted plant", "book", "chair"],
    "potted plant": ["vase", "chair", "couch", "clock"],
    "bed": ["book", "clock", "teddy bear", "remote"],
    "dining table": ["chair", "cup", "fork", "wine glass", "bowl"],
    "toilet": ["sink", "toothbrush", "hair drier", "bottle"],
    "tv": ["remote", "couch", "laptop", "potted plant"],
    "laptop": ["mouse", "keyboard", "cell phone", "cup"],
    "mouse": ["keyboard", "laptop", "tv", "cup"],
    "remote": ["tv", "couch", "cup", "book"],
    "keyboard": ["mouse", "tv", "laptop", "cell phone"],
    "cell phone": ["laptop", "handbag", "cup", "remote"],
    "microwave": ["oven", "refrigerator", "sink", "toaster"],
    "oven": ["microwave", "refrigerator", "sink", "bowl"],
    "toaster": ["microwave", "oven", "refrigerator", "knife"],
    "sink": ["toothbrush", "bottle", "toilet", "cup"],
    "refrigerator": ["oven", "microwave", "sink", "bottle"],
    "book": ["vase", "clock", "cup", "laptop"],
    "clock": ["vase", "book", "potted plant", "chair"],
    "vase": ["potted plant", "clock", "book", "cup"],
    "scissors": ["book", "cup", "knife", "laptop"],
    "teddy bear": ["bed", "book", "chair", "person"],
    "hair drier": ["sink", "toothbrush", "toilet", "bottle"],
    "toothbrush": ["sink", "toilet", "cup", "hair drier"],
}

# How to name a category in running text (the COCO label is not always what people say).
DISPLAY = {
    "sports ball": "ball", "dining table": "table", "tv": "television", "hair drier": "hair dryer",
    "remote": "remote control", "mouse": "computer mouse", "skis": "pair of skis", "broccoli": "head of broccoli",
    "person": "person", "baseball glove": "baseball glove", "potted plant": "potted plant",
}

KIND = {
    "person": "person",
    **{c: "animal" for c in ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")},
    **{c: "vehicle" for c in ("bicycle", "car", "motorcycle", "bus", "train", "truck")},
    "airplane": "flying", "kite": "flying", "boat": "floating",
    **{c: "fixture" for c in ("traffic light", "fire hydrant", "stop sign", "parking meter", "bench")},
    **{c: "furniture" for c in ("chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv",
                                 "microwave", "oven", "toaster", "sink", "refrigerator", "clock", "vase")},
}  # everything else: a small thing that lies somewhere

TEMPLATES = {
    "person": ["{X} stands next to the {a}.", "{X} is standing near the {a}."],
    "animal": ["{X} sits near the {a}.", "{X} is lying beside the {a}."],
    "vehicle": ["{X} is parked behind the {a}.", "{X} is parked near the {a}."],
    "flying": ["{X} flies high above the {a}."],
    "flying-sky": ["{X} flies across the sky."],
    "floating": ["{X} floats on the water near the {a}."],
    "fixture": ["{X} stands beside the {a}.", "{X} can be seen behind the {a}."],
    "furniture": ["{X} stands behind the {a}.", "{X} is placed next to the {a}."],
    "thing": ["{X} lies next to the {a}.", "{X} rests beside the {a}.", "There is also {x} near the {a}."],
    "extra": ["{X} is also visible in the image.", "{X} can also be seen."],
}

# Non-COCO scene words -> what tends to be there (COCO categories, or free phrases for NON_COCO scenes).
SCENE: dict[str, list[str]] = {
    "pier": ["boat", "bird", "bench"], "dock": ["boat", "bird"], "lake": ["boat", "bird"], "river": ["boat", "bird"],
    "sea": ["boat", "surfboard"], "ocean": ["boat", "surfboard"], "beach": ["umbrella", "surfboard", "kite"],
    "water": ["boat", "bird"], "shore": ["boat", "bench"], "street": ["car", "traffic light", "bus"],
    "road": ["car", "truck", "stop sign"], "city": ["bus", "traffic light", "car"], "sidewalk": ["bicycle", "fire hydrant"],
    "field": ["cow", "sheep", "dog"], "grass": ["dog", "frisbee"], "grassy": ["dog", "frisbee"], "park": ["bench", "dog"],
    "garage": ["car", "bicycle"], "kitchen": ["oven", "refrigerator"], "room": ["chair", "tv"],
    "desk": ["laptop", "cup"], "shelves": ["book", "vase"], "wall": ["clock"], "snow": ["skis", "snowboard"],
    "tripod": ["backpack"], "flag": ["person"], "launch": ["truck", "car"], "pad": ["truck"], "tower": ["bird"],
    "towers": ["bird"], "buildings": ["car", "traffic light"], "building": ["car", "bicycle"], "sky": ["bird", "airplane", "kite"],
    "mountains": ["bird", "boat"], "hills": ["cow", "sheep"], "portrait": ["chair"], "suit": ["tie"],
    "space": ["@comet", "@satellite"], "galaxies": ["@comet", "@spiral galaxy"], "stars": ["@comet", "@satellite"],
    "retina": ["@small hemorrhage", "@white cotton-wool spot"], "fundus": ["@small hemorrhage"],
}
FALLBACK_EXTRA = ["person", "bird", "dog"]  # when nothing in the answer suggests a scene at all: "... in the background."

# Synonyms from the CHAIR list that are too ambiguous to count as a mention ("a black seat" of a motorcycle).
AMBIGUOUS = {"seat", "bow", "sub", "container", "notebook", "phon", "lenovo", "ram", "pitcher", "player", "caller",
             "offender", "walker", "drinker", "buyer", "guy", "male", "female", "monitor", "bull", "cab", "liner",
             "trolley", "pew", "computer", "jet", "vessel", "bear", "kite", "tie", "remote", "mouse", "orange", "sink",
             "glass", "cake", "passenger"}

IRREGULAR_PLURAL = {"man": "men", "woman": "women", "child": "children", "person": "people", "mouse": "mice",
                    "knife": "knives", "sheep": "sheep", "foot": "feet", "tooth": "teeth", "goose": "geese",
                    "ox": "oxen", "calf": "calves", "leaf": "leaves", "shelf": "shelves", "wolf": "wolves",
                    "fish": "fish", "deer": "deer", "bus": "buses", "skis": "skis", "scissors": "scissors",
                    "people": "people", "policeman": "policemen", "gentleman": "gentlemen", "series": "series",
                    "glass": "glasses", "box": "boxes", "lady": "ladies", "cactus": "cacti"}
IRREGULAR_SINGULAR = {v: k for k, v in IRREGULAR_PLURAL.items() if k != v}


def pluralize(word: str) -> str:
    w = word.lower()
    if w in IRREGULAR_PLURAL:
        out = IRREGULAR_PLURAL[w]
    elif " " in w:
        head, _, last = w.rpartition(" ")
        return f"{word[:len(head)]} {pluralize(word[len(head) + 1:])}"
    elif re.search(r"(s|x|z|ch|sh)$", w):
        out = w + "es"
    elif re.search(r"[^aeiou]y$", w):
        out = w[:-1] + "ies"
    elif w.endswith("man"):
        out = w[:-3] + "men"
    else:
        out = w + "s"
    return out if word.islower() else out.capitalize()


def article(word: str) -> str:
    w = word.lower()
    if re.match(r"(one\b|uni|use|eu|ewe|u[bcfhjkqrstn][aeiou])", w):
        return "a"
    if re.match(r"(hour|honest|honou?r|heir)", w):
        return "an"
    return "an" if w[:1] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    if phrase.startswith("pair of") or phrase.startswith("head of"):
        return f"a {phrase}"
    return f"{article(phrase)} {phrase}"


def display(cat: str) -> str:
    return cat[1:] if cat.startswith("@") else DISPLAY.get(cat, cat)


def kind(cat: str) -> str:
    if cat.startswith("@"):
        return "extra"
    return KIND.get(cat, "thing")


@lru_cache(maxsize=1)
def synonyms() -> dict[str, str]:
    """Surface form (singular and plural, lower case) -> COCO category, from povid_cli/data/coco_synonyms.txt."""
    out: dict[str, str] = {}
    for cat, names in coco.categories():
        for n in names:
            if n in AMBIGUOUS and n != cat:
                continue
            out.setdefault(n, cat)
            out.setdefault(pluralize(n), cat)
        out.setdefault(DISPLAY.get(cat, cat), cat)
    for w in ("kite", "mouse", "remote", "orange", "sink", "bear", "tie", "cake"):  # only as exact category words
        out[w] = w
        out[pluralize(w)] = w
    out.pop("people", None)
    out["people"] = "person"
    return out


@lru_cache(maxsize=1)
def mention_pattern() -> re.Pattern:
    """One regex for every surface form, longest first, so "fire hydrant" wins over "fire"."""
    forms = sorted(synonyms(), key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(f) for f in forms) + r")\b", re.IGNORECASE)


# Words that are COCO objects but also adjectives or verbs: only a mention when no noun follows.
ADJECTIVE_USES = {"orange", "tie", "sink", "remote", "bear", "kite", "mouse", "cake"}

# Siblings an object can be mistaken for (cat -> dog, motorcycle -> bicycle), for object swaps.
GROUPS = [
    ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"],
    ["bicycle", "motorcycle"], ["car", "bus", "truck", "train"], ["airplane", "boat"],
    ["bottle", "wine glass", "cup", "bowl", "vase"], ["fork", "knife", "spoon"],
    ["banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake"],
    ["chair", "couch", "bed", "bench"], ["tv", "laptop", "cell phone", "remote", "keyboard", "mouse", "book"],
    ["microwave", "oven", "toaster", "refrigerator", "sink"], ["backpack", "handbag", "suitcase", "umbrella"],
    ["frisbee", "sports ball", "kite", "skateboard", "surfboard", "snowboard", "skis", "tennis racket", "baseball bat"],
    ["traffic light", "stop sign", "fire hydrant", "parking meter"], ["clock", "vase", "potted plant", "teddy bear"],
]
SIBLINGS = {c: [x for x in g if x != c] for g in GROUPS for c in g}
