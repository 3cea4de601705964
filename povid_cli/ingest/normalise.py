"""`ingest`: records from annotation files and folders -> `items` rows.

Input: `Record`-like dicts with the image's raw bytes (read by the ingest task, povid_cli/ingest/tasks.py).
Output columns (schemas.ITEMS): id, image, image_sha256, width, height, prompt, chosen, has_answer,
rejected, task, objects, source, source_id, turn.

`id` = sha256(image_sha256 + "\\n" + prompt)[:16], with image_sha256 the hash of the source bytes:
the same image bytes and prompt always give the same id, so ingesting a folder again adds only what is new.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from povid_cli.core.errors import RowError
from povid_cli.core.images import DEFAULT_MAX_PIXELS, normalise
from povid_cli.core.options import Options, opt
from povid_cli.core.stage import failure


@dataclass(frozen=True)
class IngestConfig(Options):
    image_root: str | None = opt(None, "Folder that image paths in annotation files are relative to [default: the "
                                 "annotation file's folder].")
    prompt: str | None = opt(None, "Prompt for images from a folder or COCO captions [default: 'Describe this image "
                             "in detail.'].")
    shard_size: int = opt(512, "Items per shard: the unit of work, resume and parallelism.", min=1)
    max_pixels: int = opt(DEFAULT_MAX_PIXELS, "Refuse images with more pixels than this (decompression bombs).", min=1)


def image_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def item_id(image_hash: str, prompt: str) -> str:
    return hashlib.sha256(f"{image_hash}\n{prompt}".encode()).hexdigest()[:16]


def normalise_records(records: list[dict], config: IngestConfig) -> tuple[list[dict], list[dict]]:
    """Decode, check and normalise each record's image; good ones become item rows, bad ones failures."""
    rows, failed = [], []
    for rec in records:
        try:
            norm = normalise(rec["bytes"], config.max_pixels)
        except RowError as e:
            failed.append(failure(rec.get("id"), f"{rec.get('image_name') or rec.get('source')}: {e}",
                                  kind=e.kind, retryable=e.retryable, detail=_detail(rec)))
            continue
        except Exception as e:  # noqa: BLE001 - any decoder crash is a bad image, not a crashed run
            failed.append(failure(rec.get("id"), f"{rec.get('image_name')}: {type(e).__name__}: {e}",
                                  kind="bad_image", detail=_detail(rec)))
            continue
        rows.append({
            "id": rec["id"],
            "image": {"bytes": norm.data, "path": rec.get("image_name")},
            "image_sha256": rec["image_sha256"],
            "width": norm.width,
            "height": norm.height,
            "prompt": rec["prompt"],
            "chosen": rec["chosen"],
            "has_answer": rec["has_answer"],
            "rejected": rec.get("rejected"),
            "task": rec.get("task") or "vqa",
            "objects": rec.get("objects"),
            "source": rec["source"],
            "source_id": rec.get("source_id"),
            "turn": rec.get("turn", 0),
        })
    return rows, failed


def _detail(rec: dict) -> str:
    return json.dumps({"source": rec.get("source"), "source_id": rec.get("source_id"), "image": rec.get("image_name")})
