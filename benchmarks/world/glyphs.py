"""The world's object types and how an image of them is drawn.

Each type is a COCO category with a one-word name (so povid's CHAIR matching and its `rules`
hallucinator treat it as the real object) drawn as its own shape in its own colour. Pairs are chosen so
that povid's co-occurrence table (`stages/cooccurrence.py`) lists the partner first for the anchor
(zebra -> giraffe, cow -> sheep, clock -> vase, microwave -> oven): the `rules` backend inserts it as
the hallucinated object for 1 in 3-4 of its rejected answers (the loners, bird and elephant, are among
zebra's other candidates).

    draw(objects, size=64, rng=np.random.default_rng(0)) -> (PIL RGB image, [[x, y, w, h], ...])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class GlyphType:
    name: str          # COCO category name (one word)
    coco_id: int       # its id in COCO's instances files
    shape: str
    colour: tuple[int, int, int]


# Distinct hues, far apart in RGB: the prototype's SFT recall fell to 0.57 with similar colours.
TYPES: tuple[GlyphType, ...] = (
    GlyphType("zebra", 24, "circle", (230, 25, 75)),
    GlyphType("giraffe", 25, "square", (0, 130, 200)),
    GlyphType("cow", 21, "triangle", (255, 225, 25)),
    GlyphType("sheep", 20, "diamond", (60, 180, 75)),
    GlyphType("clock", 85, "cross", (245, 130, 48)),
    GlyphType("vase", 86, "ring", (145, 30, 180)),
    GlyphType("microwave", 78, "hbar", (70, 240, 240)),
    GlyphType("oven", 79, "vbar", (240, 50, 230)),
    GlyphType("bird", 16, "hexagon", (255, 255, 255)),
    GlyphType("elephant", 22, "xshape", (170, 110, 40)),
)
BY_NAME = {t.name: t for t in TYPES}
# (anchor, partner): the partner co-occurs with the anchor; the SFT captions sometimes name it unseen.
# Partners are animals or furniture, whose `rules` sentences all start with the object ("A giraffe sits
# near the zebra."), so the hallucination is one decision: after the anchor's sentence, say "A" or not.
PAIRS: tuple[tuple[str, str], ...] = (("zebra", "giraffe"), ("cow", "sheep"), ("clock", "vase"), ("microwave", "oven"))
LONERS: tuple[str, ...] = ("bird", "elephant")


def _polygon(cx: float, cy: float, r: float, n: int, phase: float) -> list[tuple[float, float]]:
    return [(cx + r * np.cos(phase + 2 * np.pi * k / n), cy + r * np.sin(phase + 2 * np.pi * k / n)) for k in range(n)]


def draw_shape(d: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    """One glyph filling the square `box` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    w = x1 - x0
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, w / 2
    t = max(2, w // 4)  # stroke width of the thin shapes
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle((x0 + 1, y0 + 1, x1 - 1, y1 - 1), fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
    elif shape == "diamond":
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    elif shape == "cross":
        d.rectangle((cx - t / 2, y0, cx + t / 2, y1), fill=colour)
        d.rectangle((x0, cy - t / 2, x1, cy + t / 2), fill=colour)
    elif shape == "ring":
        d.ellipse(box, outline=colour, width=t)
    elif shape == "hbar":
        d.rectangle((x0, cy - t, x1, cy + t), fill=colour)
    elif shape == "vbar":
        d.rectangle((cx - t, y0, cx + t, y1), fill=colour)
    elif shape == "hexagon":
        d.polygon(_polygon(cx, cy, r, 6, 0.0), fill=colour)
    elif shape == "xshape":
        d.line((x0, y0, x1, y1), fill=colour, width=t)
        d.line((x0, y1, x1, y0), fill=colour, width=t)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def place(n: int, size: int, rng: np.random.Generator, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """n non-overlapping squares (x, y, side) inside a size x size canvas."""
    for _ in range(200):
        out: list[tuple[int, int, int]] = []
        for _ in range(n):
            for _ in range(50):
                s = int(rng.integers(lo, hi + 1))
                x, y = int(rng.integers(1, size - s)), int(rng.integers(1, size - s))
                if all(x + s + 2 <= a or a + b + 2 <= x or y + s + 2 <= c or c + b + 2 <= y for a, c, b in out):
                    out.append((x, y, s))
                    break
        if len(out) == n:
            return out
    raise RuntimeError(f"could not place {n} glyphs on a {size}px canvas")


def draw(objects: list[str], size: int, rng: np.random.Generator) -> tuple[Image.Image, list[list[int]]]:
    """A noisy size x size RGB image holding one glyph per name in `objects`; returns it and the COCO
    boxes [x, y, w, h] in the same order."""
    base = rng.integers(20, 70, size=3)
    pixels = np.clip(base + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(pixels, "RGB")
    d = ImageDraw.Draw(im)
    lo, hi = max(8, size * 13 // 64), max(10, size * 18 // 64)  # 13..18 px on 64 px: about one patch
    boxes = []
    for name, (x, y, s) in zip(objects, place(len(objects), size, rng, lo, hi)):
        t = BY_NAME[name]
        colour = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in t.colour)  # a little jitter
        draw_shape(d, t.shape, (x, y, x + s, y + s), colour)
        boxes.append([x, y, s, s])
    return im, boxes
