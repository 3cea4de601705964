"""COCO: captions JSON (one record per image: its longest caption) and instances JSON (objects and boxes).

- captions (`images` + `annotations` with `caption`): COCO has ~5 captions per image and POVID pairs one
  answer per (image, prompt): the longest is kept; the prompt is --prompt or "Describe this image in detail.".
- instances (`annotations` with `category_id` and `bbox`, `categories`), given as another SRC of the same
  run: each captioned image gets `objects` (its sorted category names) and `boxes` ({label, bbox} with
  COCO's [x, y, w, h] in pixels, measured on the image's `width` x `height`; ingest moves them into the
  pixels of the stored image, see core/images.py `boxes_to_stored`). An instances file is side data: it
  yields no record of its own.
"""

from __future__ import annotations

from typing import Iterator

from povid_cli.ingest.readers.layouts import Ctx
from povid_cli.ingest.record import Record


def is_coco(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("annotations"), list)


def is_instances(data) -> bool:
    if not is_coco(data) or "categories" not in data:
        return False
    anns = data["annotations"]
    return bool(anns) and "category_id" in anns[0] and not any("caption" in a for a in anns[:5])


def _size(im: dict) -> tuple[int, int] | None:
    """(width, height) of a COCO `images` entry, the frame its boxes are measured in, when it says."""
    return (im["width"], im["height"]) if im.get("width") and im.get("height") else None


def side_data(data) -> dict[str, dict]:
    """file_name -> {"objects": sorted categories, "boxes": [{label, bbox}], "size": (width, height) or None}."""
    cats = {c["id"]: c["name"] for c in data.get("categories", []) if isinstance(c, dict)}
    images = {im["id"]: im for im in data.get("images", []) if isinstance(im, dict) and "id" in im}
    out: dict[str, dict] = {}
    for a in data["annotations"]:
        name = cats.get(a.get("category_id"))
        im = images.get(a.get("image_id"))
        if not name or not im or not im.get("file_name"):
            continue
        e = out.setdefault(im["file_name"], {"objects": set(), "boxes": [], "size": _size(im)})
        e["objects"].add(name)
        bbox = a.get("bbox")
        if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
            e["boxes"].append({"label": name, "bbox": [float(v) for v in bbox]})
    return {fn: {**e, "objects": sorted(e["objects"])} for fn, e in out.items()}


def records(data: dict, ctx: Ctx) -> Iterator[Record]:
    images = {im["id"]: im for im in data.get("images", []) if isinstance(im, dict) and "id" in im}
    best: dict = {}
    for a in data["annotations"]:
        cap = (a.get("caption") or "").strip() if isinstance(a, dict) else ""
        iid = a.get("image_id") if isinstance(a, dict) else None
        if cap and (iid not in best or len(cap) > len(best[iid])):
            best[iid] = cap
    for iid, cap in best.items():
        rec = ctx.record(iid, prompt=ctx.prompt, chosen=cap, task="caption")
        im = images.get(iid)
        if im is None:
            yield rec.fail(f"caption for unknown image_id {iid}")
            continue
        fn = im.get("file_name", "")
        try:
            rec.images, rec.image_names = ctx.images(fn)
        except ValueError as e:
            yield rec.fail(str(e), "bad_path")
            continue
        side = ctx.side.get(fn)
        if side:
            rec.objects, rec.boxes = side["objects"], side["boxes"] or None
            rec.box_size = side["size"] or _size(im)
        yield rec


__all__ = ["is_coco", "is_instances", "side_data", "records"]
