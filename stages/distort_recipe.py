"""Distorted images are derived data: by default `distort` keeps how to rebuild them, not their pixels.

A `distorted` row stored with `--store recipe` has null image bytes, a `recipe` (the method spec and the
distort options: size, square, seed, format, quality, image index) and the `sha256` of each image it made.
`materialise(item, row)` rebuilds the images from the item's own (the same deterministic code path:
decode, resize, the method with the per-image seed, encode) and checks them against those checksums: a
mismatch (other numpy / OpenCV / albumentations versions than the ones that made the row) is a RowError
naming the way out (`povid distort --store pixels` after deleting DATA/distorted), never silently other
pixels. Rows stored with their pixels (`--store pixels`, or made by an older povid) are returned as they
are. What it costs: the distort work again where the pixels are used (about 12 ms per 336 px image on
one core: sample, the report's thumbnails, an export of contrast pairs), against ~450 KB of disk per
noised image.
"""

from __future__ import annotations

import json
from functools import lru_cache

from povid_cli.core.errors import RowError


@lru_cache(maxsize=32)
def _stage(recipe: str):
    from stages.distort import DistortConfig, DistortStage

    r = json.loads(recipe)
    return DistortStage(DistortConfig(methods=(r["method"],), size=r["size"], square=r["square"], seed=r["seed"],
                                      format=r["format"], quality=r["quality"], image_index=r.get("image_index"),
                                      store="pixels"))


def materialise(item: dict, row: dict) -> dict:
    """The distorted row with its image bytes (rebuilt from the item when it was stored as a recipe)."""
    if (row.get("image") or {}).get("bytes") or not row.get("recipe"):
        return row
    rebuilt, failed = _stage(row["recipe"]).distort_item(item)
    match = next((r for r in rebuilt if r["id"] == row["id"]), None)
    if match is None:
        why = failed[0]["error"] if failed else "the recipe made no such variant"
        raise RowError(f"{row['id']}: the distorted image cannot be rebuilt: {why}", kind="rebuild_failed")
    if match["sha256"] != list(row.get("sha256") or []):
        raise RowError(f"{row['id']}: the rebuilt distorted image differs from the one distort made (checksum "
                       "mismatch: other numpy / OpenCV / albumentations versions?); delete DATA/distorted and run "
                       "`povid distort --store pixels`", kind="rebuild_mismatch")
    return {**row, "image": match["image"], "extra_images": match["extra_images"]}
