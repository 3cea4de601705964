"""`export`: preference pairs -> the formats training code reads. Pure functions, rows in -> rows out.

Input: rows shaped like `schemas.PAIRS` (id, item_id, kind, prompt, chosen, rejected, image,
extra_images, variant, task, source, source_id; filter adds score columns, which are ignored here).
Before `filter` has run, `pairs_from_items` turns the items' given pairs (the rejected answers their
sources gave: POVID, TRL, RLAIF-V, ...) into such rows.

Formats (an item's images: `image`, then `extra_images` for multi-image items):
- `trl`: one row per pair, what `trl.DPOTrainer` takes for VLMs: `images` (list of image structs, all of
  the item's), conversational `prompt` (one image placeholder per image) / `chosen` / `rejected`, plus
  `kind` and provenance columns (and `weight` when the pairs carry one: `filter --weight-by`, normalised
  by the export job, see stages/weights.py). povid's extension, when the export holds `contrast` pairs
  (filter --kinds ...,contrast): `rejected_images`, the images the rejected answer is read under (a list of
  images, `datasets` Image features; null for the other kinds), which `povid train` reads. Plain
  `trl.DPOTrainer` ignores the column (it would train a contrast pair as chosen == rejected: no signal).
- `povid`: the JSON of the POVID repository: `conversations` (human + chosen gpt turn),
  `rejected_conversations` (human + rejected gpt turn), `image` (a path relative to the JSON file; a
  list of paths for a multi-image item, one `<image>` tag each).
- `llava`: LLaVA instruction JSON with the chosen answers, one record per item (no weight: SFT data).
- `sharegpt`: ShareGPT preference JSON (the LLaMA-Factory layout): `conversations` (the human turn),
  `chosen` and `rejected` (gpt turns), `images` (paths relative to the JSON file).
`povid` and `sharegpt` records carry `weight` too when the export is weighted. They cannot hold a rejected
image: contrast pairs are left out of them (`split_rejected_images`) and the export says how many. `llava`
(chosen answers only) keeps them: a contrast pair's chosen answer under its clean image is plain SFT data.
The JSON formats reference image files; `image_files` names each distinct image once.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import pyarrow as pa

from povid_cli.core.images import extension
from povid_cli.core.schemas import IMAGE, item_images
from povid_cli.core.schemas import hf_features as _hf_features

FORMATS = ("trl", "povid", "llava", "sharegpt")
KINDS = ("text", "image", "contrast", "all")
# formats with a place for the image the rejected answer is read under (contrast pairs); llava has no rejected side
REJECTED_IMAGE_FORMATS = ("trl", "llava")
JSON_FILES = {"povid": "povid.json", "llava": "llava.json", "sharegpt": "sharegpt.json"}
IMAGE_TAG = "<image>\n"

# -- the TRL table ---------------------------------------------------------------------------------
_PART = pa.struct([("type", pa.string()), ("text", pa.string())])
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.list_(_PART))]))
TRL = pa.schema([
    ("images", pa.list_(IMAGE)),
    ("prompt", MESSAGES),
    ("chosen", MESSAGES),
    ("rejected", MESSAGES),
    ("kind", pa.string()),
    ("id", pa.string()),
    ("item_id", pa.string()),
    ("variant", pa.string()),
    ("task", pa.string()),
    ("source", pa.string()),
    ("source_id", pa.string()),
])
# with pair weights (filter --weight-by): `povid train --weight-column weight` reads them
TRL_WEIGHTED = pa.schema(list(TRL) + [pa.field("weight", pa.float64())])
# povid's extension for contrast pairs: the rejected side's images (null for the other kinds)
REJECTED_IMAGES = pa.field("rejected_images", pa.list_(IMAGE))
IMAGE_COLUMNS = {"images": "List", "rejected_images": "List"}


def trl_schema(weighted: bool, contrast: bool = False) -> pa.Schema:
    schema = TRL_WEIGHTED if weighted else TRL
    return schema.append(REJECTED_IMAGES) if contrast else schema


def rejected_images(p: dict) -> list[dict] | None:
    """A contrast pair's rejected-side images (first + the others), else None."""
    if p.get("rejected_image") is None:
        return None
    return [{"bytes": im["bytes"], "path": im.get("path")} for im in [p["rejected_image"], *(p.get("rejected_extra_images") or [])]]


def split_rejected_images(pairs: list[dict], fmt: str) -> tuple[list[dict], int]:
    """(the pairs `fmt` can hold, how many it cannot): formats without a rejected image leave contrast pairs out."""
    if fmt in REJECTED_IMAGE_FORMATS:
        return pairs, 0
    kept = [p for p in pairs if p.get("rejected_image") is None]
    return kept, len(pairs) - len(kept)


def pair_id(item_id: str, kind: str, rejected: str) -> str:
    return hashlib.sha256(f"{item_id}\n{kind}\n{rejected}".encode()).hexdigest()[:16]


def pairs_from_items(items: Iterable[dict], given: Iterable[dict] = ()) -> list[dict]:
    """The items' given pairs as pair rows of kind `text`, item by item in order (items without an answer
    left out). A format-1 dataset's items carry their one given answer in `rejected`."""
    by_item: dict[str, list[dict]] = {}
    for g in given:
        by_item.setdefault(g["item_id"], []).append(g)
    out = []
    for it in items:
        if not it.get("has_answer", True):
            continue
        base = {"item_id": it["id"], "kind": "text", "prompt": it["prompt"], "chosen": it["chosen"],
                "image": it["image"], "extra_images": it.get("extra_images"), "variant": None, "task": it.get("task"),
                "source": it.get("source"), "source_id": it.get("source_id")}
        rej = it.get("rejected")
        if rej:
            out.append({**base, "id": pair_id(it["id"], "text", rej), "rejected": rej})
        for g in by_item.get(it["id"], []):
            out.append({**base, "id": g["id"], "rejected": g["rejected"], "source": g.get("source") or base["source"],
                        "source_id": g.get("source_id")})
    return out


def select(pairs: Iterable[dict], kind: str = "all", limit: int | None = None) -> list[dict]:
    """Pairs of one kind (text | image | all), the first `limit` of them."""
    out = []
    for p in pairs:
        if limit is not None and len(out) >= limit:
            break
        if kind == "all" or p.get("kind") == kind:
            out.append(p)
    return out


def user_turn(prompt: str, n_images: int = 1) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "text": None}] * n_images + [{"type": "text", "text": prompt}]}]


def assistant_turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def to_trl(pairs: Iterable[dict], weighted: bool = False, contrast: bool = False) -> list[dict]:
    """Rows of `trl_schema(weighted, contrast)`: with `weighted` each pair's `weight`, with `contrast` its
    `rejected_images` (contrast pairs; null for the others)."""
    return [{
        "images": [{"bytes": im["bytes"], "path": im.get("path")} for im in item_images(p)],
        "prompt": user_turn(p["prompt"], len(item_images(p))),
        "chosen": assistant_turn(p["chosen"]),
        "rejected": assistant_turn(p["rejected"]),
        "kind": p.get("kind"), "id": p["id"], "item_id": p["item_id"], "variant": p.get("variant"),
        "task": p.get("task"), "source": p.get("source"), "source_id": p.get("source_id"),
        **({"weight": p.get("weight")} if weighted else {}),
        **({"rejected_images": rejected_images(p)} if contrast else {}),
    } for p in pairs]


def _weight(p: dict) -> dict:
    """The pair's `weight` for a JSON record, when the export is weighted."""
    return {"weight": p["weight"]} if "weight" in p else {}


def hf_features(schema: pa.Schema, image_columns: dict[str, str]) -> dict:
    """The `datasets` Features dict for `schema` (image_columns: name -> "Image" | "List"), for the
    Parquet `huggingface` metadata, so `load_dataset` decodes images without a cast and without
    importing `datasets` here (core/schemas.py; every stage's Parquet gets the same)."""
    return _hf_features(schema, image_columns)


# -- the JSON formats ------------------------------------------------------------------------------
def image_file(image: dict) -> str:
    """Where an image is written in a JSON export: images/<sha256 of its bytes><ext> (once per image)."""
    data = image["bytes"]
    return f"images/{hashlib.sha256(data).hexdigest()[:20]}{extension(data)}"


def _human(prompt: str, n_images: int = 1) -> dict:
    return {"from": "human", "value": IMAGE_TAG * n_images + prompt}


def _image_field(p: dict):
    """A path for a one-image item (as LLaVA writes it), the list of paths for a multi-image one."""
    files = [image_file(im) for im in item_images(p)]
    return files[0] if len(files) == 1 else files


def to_povid(pairs: Iterable[dict]) -> list[dict]:
    out = []
    for p in pairs:
        human = _human(p["prompt"], len(item_images(p)))
        out.append({
            "id": p["id"], "image": _image_field(p),
            "conversations": [human, {"from": "gpt", "value": p["chosen"]}],
            "rejected_conversations": [human, {"from": "gpt", "value": p["rejected"]}],
            "kind": p.get("kind"), "item_id": p["item_id"], "source_id": p.get("source_id"), **_weight(p),
        })
    return out


def to_llava(pairs: Iterable[dict]) -> list[dict]:
    """One record per item (pairs of the same item share its chosen answer)."""
    out, seen = [], set()
    for p in pairs:
        if p["item_id"] in seen:
            continue
        seen.add(p["item_id"])
        out.append({
            "id": p["item_id"], "image": _image_field(p),
            "conversations": [_human(p["prompt"], len(item_images(p))), {"from": "gpt", "value": p["chosen"]}],
            "source_id": p.get("source_id"),
        })
    return out


def to_sharegpt(pairs: Iterable[dict]) -> list[dict]:
    return [{
        "id": p["id"], "images": [image_file(im) for im in item_images(p)],
        "conversations": [_human(p["prompt"], len(item_images(p)))],
        "chosen": {"from": "gpt", "value": p["chosen"]},
        "rejected": {"from": "gpt", "value": p["rejected"]},
        "kind": p.get("kind"), "item_id": p["item_id"], **_weight(p),
    } for p in pairs]


JSON_CONVERTERS = {"povid": to_povid, "llava": to_llava, "sharegpt": to_sharegpt}


def image_files(pairs: Iterable[dict]) -> dict[str, bytes]:
    """relative path -> bytes, once per distinct image."""
    files: dict[str, bytes] = {}
    for p in pairs:
        for im in item_images(p):
            files.setdefault(image_file(im), im["bytes"])
    return files
