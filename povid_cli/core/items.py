"""Images are stored once, in `items` (and a distorted image as its recipe, in `distorted`): later outputs
(pairs) refer to them by item_id / rejected_id, and readers that need the pixels (export, train, report)
attach them from the shards with the same number (every stage output's shard k holds rows of the items of
items shard k)."""

from __future__ import annotations

from typing import Callable

from povid_cli.core.store import Dataset

ITEM_COLUMNS = ("id", "image", "extra_images", "boxes")


def _read(ds: Dataset, output: str, k: int, ids: set[str], key: str = "id", columns=None) -> dict[str, dict]:
    names = ds.shard(output, k).parquet_schema().names
    cols = [c for c in columns if c in names] if columns else None
    return {r[key]: r for r in ds.read_shard(output, k, columns=cols).to_pylist() if r[key] in ids}


def attach_images(ds: Dataset, k: int, rows: list[dict], rebuild: Callable[[dict, dict], list[dict]] | None = None
                  ) -> list[dict]:
    """rows (of shard k of an output) with `image` / `extra_images` filled from items shard k where empty (rows
    written before images were stored once carry their own and are left as they are); with `rebuild`
    (item, distorted row) -> the rejected side's images, a contrast pair's `rejected_image` /
    `rejected_extra_images` from its distorted row too."""
    want = {r["item_id"] for r in rows if not r.get("image")}
    contrast = [r for r in rows if r.get("kind") == "contrast" and not r.get("rejected_image")] if rebuild else []
    want |= {r["item_id"] for r in contrast}
    if not want:
        return rows
    items = _read(ds, "items", k, want, columns=ITEM_COLUMNS)
    for r in rows:
        it = items.get(r["item_id"])
        if it is not None and not r.get("image"):
            r["image"], r["extra_images"] = it["image"], it.get("extra_images")
    if contrast:
        dist = _read(ds, "distorted", k, {r["rejected_id"] for r in contrast})
        for r in contrast:
            d, it = dist.get(r["rejected_id"]), items.get(r["item_id"])
            if d is not None and it is not None:
                images = rebuild(it, d)
                r["rejected_image"], r["rejected_extra_images"] = images[0], images[1:] or None
    return rows
