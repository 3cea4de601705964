"""`contrast` pairs: the same ground-truth answer, preferred under the clean image over a distorted one.

mDPO's conditional preference, V-DPO's and CHiP's image-contrast pairs (CHiP with diffusion-noised images): the
model must prefer the answer *because of the image*, not because of the words. Used by `filter --kinds
...,contrast` (stages/filter.py), which reads `distorted` for them. Pure functions, no I/O.

Input: an item row (id, prompt, chosen, image, extra_images, boxes, ...) and its `distorted` rows.
Output: candidate pair rows of kind `contrast`: chosen == rejected == the item's answer, `image` /
`extra_images` the clean images, `rejected_image` / `rejected_extra_images` the variant's (every position, the
distorted ones in place: schemas.variant_images), `variant`, `rejected_source` "distorted", `rejected_id` the
distorted row, and the scores `image_diff` (mean absolute pixel change of the distorted images, 0..1) and
`changed_area` (the share of their pixels moved by more than CHANGE_LEVEL levels in some channel).

What makes a bad contrast pair (drop reasons, on top of filter's `no_chosen`):
- `identical_image`: the variant is the clean image (no pixel moved by more than one level: rounding);
- `weak_contrast`: it changes too little of the image to matter (`min_image_change` of the pixels);
- `region_unmentioned`: local noise on objects the answer never names: the answer holds as well under the noised
  image, so the pair teaches no preference (MMedPO noises the region that matters to the answer);
- `bad_image`: either image cannot be decoded.
Contrast pairs skip the text filters (their two answers are the same text on purpose), the duplicate index
(two variants of one item, or a common answer like "Yes." on many items, are not duplicates) and the judge.
"""

from __future__ import annotations

from povid_cli.core.schemas import item_images, variant_images
from povid_cli.core.errors import RowError
from povid_cli.core.stage import pair_id
from stages.distort_recipe import materialise

CHANGE_LEVEL = 8  # pixel levels (of 255): a change above resampling and JPEG rounding

DROP_REASONS = {
    "identical_image": "contrast pair whose distorted image equals the clean one (no pixel moved by more than 1 level)",
    "weak_contrast": "contrast pair whose distorted image changes less than --min-image-change of the pixels",
    "region_unmentioned": "local-noise contrast pair on objects the answer does not name (it holds under either image)",
    "bad_image": "contrast pair whose clean or distorted image cannot be decoded",
}
SCORE_FIELDS = [("image_diff", "float64"), ("changed_area", "float64")]


def rejected_images(item: dict, distorted: dict) -> list[dict]:
    """A contrast pair's rejected side: the item's images with the distorted ones in their places (rebuilt
    when the distorted row keeps a recipe)."""
    return variant_images(item, materialise(item, distorted))


def candidates(item: dict, distorted: list[dict]) -> list[dict]:
    """One contrast candidate per distorted variant of the item (pair rows, see the module docstring)."""
    chosen = item.get("chosen") or ""
    out = []
    for d in distorted:
        try:
            rejected = rejected_images(item, d)
        except (ValueError, RowError):
            rejected = []  # scored as bad_image
        c = {"item_id": item["id"], "prompt": item["prompt"], "chosen": chosen, "rejected": chosen,
             "kind": "contrast", "variant": d.get("variant"), "image": item.get("image"),
             "extra_images": item.get("extra_images"), "task": item.get("task"), "source": item.get("source"),
             "source_id": item.get("source_id"), "rejected_source": "distorted", "rejected_id": d["id"],
             "model": None, "rejected_image": rejected[0] if rejected else None,
             "rejected_extra_images": rejected[1:] or None, "_distorted": d, "_boxes": item.get("boxes")}
        c["id"] = pair_id(c["item_id"], "contrast", c["variant"], chosen)
        out.append(c)
    return out


def _aligned(clean, shape: tuple[int, int]):
    """The clean image brought to the variant's geometry the way `distort` moves it (pad to a square and/or
    resize the short side), else plainly resized."""
    import cv2

    from stages.distort import pad_square, resize_short_side

    if clean.shape[:2] == shape:
        return clean
    h, w = shape
    for candidate in ((pad_square(clean) if h == w else None), clean):
        if candidate is None:
            continue
        moved = resize_short_side(candidate, min(h, w))
        if moved.shape[:2] == shape:
            return moved
    return cv2.resize(clean, (w, h), interpolation=cv2.INTER_AREA)


def image_change(pairs: list[tuple[bytes, bytes]]) -> tuple[float, float, int]:
    """(image_diff, changed_area, largest pixel change) over (clean, distorted) image bytes: mean absolute
    difference / 255, share of pixels changed by more than CHANGE_LEVEL in some channel, max difference."""
    import numpy as np

    from stages.distort import decode

    total = diff_sum = changed = 0
    largest = 0
    for clean_bytes, variant_bytes in pairs:
        variant = decode(variant_bytes)
        clean = _aligned(decode(clean_bytes), variant.shape[:2])
        d = np.abs(clean.astype(np.int16) - variant.astype(np.int16)).max(axis=2)
        total += d.size
        diff_sum += float(np.abs(clean.astype(np.int16) - variant.astype(np.int16)).mean()) * d.size
        changed += int((d > CHANGE_LEVEL).sum())
        largest = max(largest, int(d.max()))
    return (diff_sum / total / 255.0 if total else 0.0), (changed / total if total else 0.0), largest


def _mentions(chosen: str, labels: list[str]) -> list[str]:
    """The labels the answer names: as COCO objects (with CHAIR's synonyms) or word for word (singular)."""
    from stages import chair
    from stages.textsim import words

    cw = words(chosen)
    said_objects = set(chair.find_objects(cw))
    said_words = {chair.singular(w) for w in cw}
    out = []
    for label in labels:
        lw = [chair.singular(w) for w in words(label)]
        if (lw and all(w in said_words for w in lw)) or (chair.canonical([label]) & said_objects):
            out.append(label)
    return out


def score(c: dict, cfg) -> tuple[str, str] | None:
    """Fill a contrast candidate's scores; (drop_reason, detail) or None to keep it. `cfg`: FilterConfig
    (min_image_change, region_check)."""
    c["similarity"], c["n_edits"], c["hallucinated_objects"], c["changed_attributes"] = 1.0, 0, [], []
    if cfg.weight_by:
        from stages.weights import raw_score

        c["weight_score"] = raw_score(c, cfg.weight_by)  # no text difference: the lowest score of its kind
    if not c["chosen"].strip():
        return "no_chosen", "the item has no answer to prefer"
    d = c["_distorted"]
    clean, variant = item_images(c), ([c["rejected_image"]] if c.get("rejected_image") else []) \
        + list(c.get("rejected_extra_images") or [])
    positions = d.get("image_indices")
    positions = range(len(clean)) if positions is None else positions
    if not variant or len(variant) != len(clean) or not positions:
        return "bad_image", f"distorted row {d['id']} does not match the item's {len(clean)} image(s)"
    moved = [((clean[p] or {}).get("bytes"), (variant[p] or {}).get("bytes")) for p in positions]
    try:
        c["image_diff"], c["changed_area"], largest = image_change(moved)
    except Exception as e:  # noqa: BLE001 - a broken image is a dropped pair, not a crashed shard
        return "bad_image", f"{type(e).__name__}: {e}"[:200]
    c["image_diff"], c["changed_area"] = round(c["image_diff"], 6), round(c["changed_area"], 6)
    if largest <= 1:
        return "identical_image", f"largest pixel change {largest}"
    if cfg.min_image_change and c["changed_area"] < cfg.min_image_change:
        return "weak_contrast", f"{c['changed_area']:.4f} of the pixels changed < {cfg.min_image_change}"
    if cfg.region_check and d.get("method") == "local_noise":
        labels = sorted({b.get("label") or "" for b in c.get("_boxes") or []} - {""})
        if labels and not _mentions(c["chosen"], labels):
            return "region_unmentioned", f"noised {', '.join(labels)[:120]}; the answer names none of them"
    return None
