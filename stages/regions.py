"""Object boxes as pixel regions, for `distort -m local-noise` (MMedPO's local lesion-noising).

Input: an item's `boxes` (schemas.BOX: `label`, `bbox` = [x, y, w, h] in pixels of the stored image) and the
geometry `distort` applies before noising (pad to a square, then resize so the short side is `size`).
Output: the boxes in the pixels of the image that is noised, and a boolean mask of the padded boxes.

    boxes = follow_boxes(item["boxes"], (h, w), square=False, size=336)   # as the image was transformed
    mask = box_mask((nh, nw), boxes, pad=0.1)                             # True inside the padded boxes

Pure numpy, no I/O.
"""

from __future__ import annotations

import math

import numpy as np


def valid_boxes(boxes: list[dict] | None) -> list[tuple[float, float, float, float]]:
    """(x, y, w, h) of every box with four finite numbers and a positive width and height."""
    out = []
    for b in boxes or []:
        bbox = (b or {}).get("bbox") or []
        if len(bbox) != 4 or any(v is None or not math.isfinite(v) for v in bbox):
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w > 0 and h > 0:
            out.append((x, y, w, h))
    return out


def follow_boxes(boxes: list[tuple[float, float, float, float]], shape: tuple[int, int], *, square: bool,
                 size: int) -> list[tuple[float, float, float, float]]:
    """Boxes of an image of `shape` (h, w) moved as `distort` moves its pixels: `square` centres the image on a
    square canvas (stages.distort.pad_square), then `size` > 0 scales it so that its short side is `size`
    (stages.distort.resize_short_side, same rounding of the new width and height)."""
    h, w = shape
    dx = dy = 0.0
    if square and h != w:
        side = max(h, w)
        dx, dy = (side - w) // 2, (side - h) // 2
        h = w = side
    sx = sy = 1.0
    if size > 0 and min(h, w) != size:
        scale = size / min(h, w)
        nw, nh = (size, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), size)
        sx, sy = nw / w, nh / h
    return [((x + dx) * sx, (y + dy) * sy, bw * sx, bh * sy) for x, y, bw, bh in boxes]


def box_mask(shape: tuple[int, int], boxes: list[tuple[float, float, float, float]], pad: float) -> np.ndarray:
    """Boolean (h, w) mask: True on every pixel a box, grown by `pad` x its own width / height on each side,
    touches (a pixel partly covered counts), clipped to the image."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for x, y, bw, bh in boxes:
        x0, x1 = x - pad * bw, x + bw + pad * bw
        y0, y1 = y - pad * bh, y + bh + pad * bh
        c0, c1 = max(0, math.floor(x0)), min(w, math.ceil(x1))
        r0, r1 = max(0, math.floor(y0)), min(h, math.ceil(y1))
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = True
    return mask
