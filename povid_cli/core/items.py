"""Images are stored once, in `items`: later outputs (pairs) refer to their item's images by item_id, and
readers that need the pixels (export, train, report) attach them from the items shard with the same number
(every stage output's shard k holds rows of the items of items shard k)."""

from __future__ import annotations

from povid_cli.core.store import Dataset


def attach_images(ds: Dataset, k: int, rows: list[dict]) -> list[dict]:
    """rows (of shard k of an output) with `image` / `extra_images` filled from items shard k where empty
    (rows written before images were stored once carry their own and are left as they are)."""
    want = {r["item_id"] for r in rows if not r.get("image")}
    if not want:
        return rows
    names = ds.shard("items", k).parquet_schema().names
    cols = ["id", "image"] + (["extra_images"] if "extra_images" in names else [])
    table = ds.read_shard("items", k, columns=cols)
    found = {r["id"]: r for r in table.to_pylist() if r["id"] in want}
    for r in rows:
        it = found.get(r["item_id"])
        if it is not None and not r.get("image"):
            r["image"] = it["image"]
            r["extra_images"] = it.get("extra_images")
    return rows
