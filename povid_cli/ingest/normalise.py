"""`ingest`'s options (IngestConfig), item ids, and the worker's step from image bytes to `items` rows.

`id` = sha256(the source bytes' sha256 of each image, the prompt, the chosen answer)[:16]: the same
images, prompt and answer always give the same id, so ingesting a source again adds nothing, and two
records that differ only in their chosen answer are two items (RLAIF-V has several per question).

Output columns (schemas.ITEMS): id, image, extra_images, image_sha256, width, height, prompt, chosen,
has_answer, task, objects, boxes, source, source_id, turn. Given pairs (schemas.GIVEN): id, item_id,
rejected, model, source, source_id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from povid_cli.core.errors import RowError
from povid_cli.core.images import DEFAULT_MAX_PIXELS, Normalised, boxes_to_stored, normalise
from povid_cli.core.options import OptionError, Options, opt

BINARIZE = ("best-worst", "all-pairs")
MAP_FIELDS = ("prompt", "chosen", "rejected", "image", "images", "id", "task", "objects", "boxes")


@dataclass(frozen=True)
class IngestConfig(Options):
    image_root: str | None = opt(None, "Folder (or URL) that image paths in annotation files are relative to; absolute "
                                 "paths must lie inside it [default: the annotation file's folder].")
    prompt: str | None = opt(None, "Prompt for images from a folder, COCO captions and HA-DPO descriptions [default: "
                             "'Describe this image in detail.'].")
    map: tuple[str, ...] = opt((), "Read another layout: FIELD=COLUMN pairs, comma-separated (fields: prompt, chosen, "
                               "rejected, image, images, id, task, objects, boxes), e.g. prompt=question,chosen=answer.",
                               sep=",", metavar="FIELD=COLUMN")
    binarize: str = opt("best-worst", "Rated completions (VLFeedback): best-worst (chosen = best mean rating, rejected "
                        "= worst) or all-pairs (each one against every lower-rated one); ties give no pair.",
                        choices=BINARIZE)
    strict: bool = opt(False, "Skipped records (text-only, no answer, no pair) count as failures: exit 1.")
    shard_size: int = opt(512, "Items per shard: the unit of work, resume and parallelism.", min=1)
    max_pixels: int = opt(DEFAULT_MAX_PIXELS, "Refuse images with more pixels than this (decompression bombs).", min=1)

    def __post_init__(self):
        super().__post_init__()
        self.mapping()

    def mapping(self) -> dict[str, str]:
        """--map as {field: source column}; OptionError for an entry that is not FIELD=COLUMN."""
        out = {}
        for entry in self.map:
            fld, eq, col = entry.partition("=")
            fld, col = fld.strip(), col.strip()
            if not eq or not col or fld not in MAP_FIELDS:
                raise OptionError("map", f"entries are FIELD=COLUMN with FIELD one of {', '.join(MAP_FIELDS)}; "
                                  f"got {entry!r}")
            out[fld] = col
        return out


def image_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def item_id(image_hashes, prompt: str, chosen: str = "") -> str:
    """The item id from its images' sha256 (one, or a list in order), its prompt and its chosen answer."""
    hashes = [image_hashes] if isinstance(image_hashes, str) else list(image_hashes)
    return hashlib.sha256(("\n".join(hashes) + "\n\0" + prompt + "\0" + chosen).encode()).hexdigest()[:16]


def item_row(item: dict, datas: list[bytes], config: IngestConfig) -> dict:
    """One `items` row from an item (its fields, no bytes) and its images' source bytes; RowError for an
    image that cannot be used (its name says which)."""
    norms: list[Normalised] = []
    for data, name in zip(datas, item["names"]):
        try:
            norms.append(normalise(data, config.max_pixels))
        except RowError as e:
            raise RowError(f"{name or 'image'}: {e}", kind=e.kind, retryable=e.retryable) from None
        except Exception as e:  # noqa: BLE001 - any decoder crash is a bad image, not a crashed run
            raise RowError(f"{name or 'image'}: {type(e).__name__}: {e}", kind="bad_image") from None
    images = [{"bytes": n.data, "path": name} for n, name in zip(norms, item["names"])]
    boxes = item.get("boxes")
    if boxes:
        boxes = boxes_to_stored(boxes, norms[0], tuple(item["box_size"]) if item.get("box_size") else None)
    return {
        "id": item["id"], "image": images[0], "extra_images": images[1:] or None,
        "image_sha256": item["shas"][0], "width": norms[0].width, "height": norms[0].height,
        "prompt": item["prompt"], "chosen": item["chosen"], "has_answer": item["has_answer"],
        "task": item.get("task") or "vqa", "objects": item.get("objects"), "boxes": boxes,
        "source": item["source"], "source_id": item.get("source_id"), "turn": item.get("turn", 0),
    }


__all__ = ["IngestConfig", "image_sha256", "item_id", "item_row", "BINARIZE", "MAP_FIELDS"]
