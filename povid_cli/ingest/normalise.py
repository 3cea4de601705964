"""`ingest`: records from annotation files and folders -> `items` rows.

Input: `Record`-like dicts with the image's raw bytes (read by the ingest runner).
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
from povid_cli.core.stage import failure


@dataclass(frozen=True)
class IngestConfig:
    image_root: str | None = None
    prompt: str | None = None
    shard_size: int = 512
    max_pixels: int = DEFAULT_MAX_PIXELS


def image_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def item_id(image_hash: str, prompt: str) -> str:
    return hashlib.sha256(f"{image_hash}\n{prompt}".encode()).hexdigest()[:16]


def detail(rec: dict) -> str:
    return json.dumps({"source": rec.get("source"), "source_id": rec.get("source_id"), "image": rec.get("image_name")})


def _read_again(rec: dict) -> bytes:
    """The bytes of a file that the runner hashed when it scanned the sources (same path, checked inside
    the image root then); a file changed since would not match its id."""
    try:
        with open(rec["image_path"], "rb") as f:
            data = f.read()
    except OSError as e:
        raise RowError(f"image cannot be read ({type(e).__name__}: {getattr(e, 'strerror', None) or e})",
                       kind="missing_image", retryable=True) from None
    if image_sha256(data) != rec["image_sha256"]:
        raise RowError("the file changed while it was being ingested; run ingest again", kind="changed",
                       retryable=True)
    return data


def normalise_records(records: list[dict], config: IngestConfig) -> tuple[list[dict], list[dict]]:
    """Decode, check and normalise each record's image; good ones become item rows, bad ones failures."""
    rows, failed = [], []
    for rec in records:
        try:
            data = rec["bytes"] if rec.get("bytes") is not None else _read_again(rec)
            norm = normalise(data, config.max_pixels)
        except RowError as e:
            failed.append(failure(rec.get("id"), f"{rec.get('image_name') or rec.get('source')}: {e}",
                                  kind=e.kind, retryable=e.retryable, detail=detail(rec)))
            continue
        except Exception as e:  # noqa: BLE001 - any decoder crash is a bad image, not a crashed run
            failed.append(failure(rec.get("id"), f"{rec.get('image_name')}: {type(e).__name__}: {e}",
                                  kind="bad_image", detail=detail(rec)))
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
