"""`export`: preference pairs -> the formats training code reads. Pure functions, rows in -> rows out.

Input: rows shaped like `schemas.PAIRS` (id, item_id, kind, prompt, chosen, rejected, image, variant,
task, source, source_id; filter adds score columns, which are ignored here). Before `filter` has run,
`pairs_from_items` turns items that carry a ready `rejected` (POVID JSON or TRL Parquet input) into
such rows.

Formats:
- `trl`: one row per pair, what `trl.DPOTrainer` takes for VLMs: `images` (list of image structs),
  conversational `prompt` / `chosen` / `rejected`, plus `kind` and provenance columns (and `weight` when
  the pairs carry one: `filter --weight-by`, normalised by the export job, see stages/weights.py).
- `povid`: the JSON of the POVID repository: `conversations` (human + chosen gpt turn),
  `rejected_conversations` (human + rejected gpt turn), `image` (a path relative to the JSON file).
- `llava`: LLaVA instruction JSON with the chosen answers, one record per item (no weight: SFT data).
- `sharegpt`: ShareGPT preference JSON (the LLaMA-Factory layout): `conversations` (the human turn),
  `chosen` and `rejected` (gpt turns), `images` (paths relative to the JSON file).
`povid` and `sharegpt` records carry `weight` too when the export is weighted.
The JSON formats reference image files; `image_files` names each distinct image once.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import pyarrow as pa

from povid_cli.core.images import extension
from povid_cli.core.schemas import IMAGE

FORMATS = ("trl", "povid", "llava", "sharegpt")
KINDS = ("text", "image", "all")
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


def trl_schema(weighted: bool) -> pa.Schema:
    return TRL_WEIGHTED if weighted else TRL


def pair_id(item_id: str, kind: str, rejected: str) -> str:
    return hashlib.sha256(f"{item_id}\n{kind}\n{rejected}".encode()).hexdigest()[:16]


def pairs_from_items(items: Iterable[dict]) -> list[dict]:
    """Items with a ready `rejected` (POVID/TRL input) as pair rows of kind `text`."""
    out = []
    for it in items:
        rej = it.get("rejected")
        if not rej or not it.get("has_answer", True):
            continue
        out.append({
            "id": pair_id(it["id"], "text", rej), "item_id": it["id"], "kind": "text",
            "prompt": it["prompt"], "chosen": it["chosen"], "rejected": rej, "image": it["image"],
            "variant": None, "task": it.get("task"), "source": it.get("source"), "source_id": it.get("source_id"),
        })
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


def user_turn(prompt: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": prompt}]}]


def assistant_turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def to_trl(pairs: Iterable[dict], weighted: bool = False) -> list[dict]:
    """Rows of the `TRL` schema (`TRL_WEIGHTED` with `weighted`: each pair's `weight`)."""
    return [{
        "images": [{"bytes": p["image"]["bytes"], "path": p["image"].get("path")}],
        "prompt": user_turn(p["prompt"]),
        "chosen": assistant_turn(p["chosen"]),
        "rejected": assistant_turn(p["rejected"]),
        "kind": p.get("kind"), "id": p["id"], "item_id": p["item_id"], "variant": p.get("variant"),
        "task": p.get("task"), "source": p.get("source"), "source_id": p.get("source_id"),
        **({"weight": p.get("weight")} if weighted else {}),
    } for p in pairs]


def _weight(p: dict) -> dict:
    """The pair's `weight` for a JSON record, when the export is weighted."""
    return {"weight": p["weight"]} if "weight" in p else {}


def hf_features(schema: pa.Schema, image_columns: dict[str, str]) -> dict:
    """The `datasets` Features dict for `schema` (image_columns: name -> "Image" | "List"), for the
    Parquet `huggingface` metadata, so `load_dataset` decodes images without a cast and without
    importing `datasets` here."""

    def feature(t: pa.DataType):
        if pa.types.is_struct(t):
            return {t.field(i).name: feature(t.field(i).type) for i in range(t.num_fields)}
        if pa.types.is_list(t):
            return {"feature": feature(t.value_type), "_type": "List"}
        dtype = {"string": "string", "int32": "int32", "int64": "int64", "double": "float64", "float": "float32",
                 "bool": "bool", "binary": "binary"}.get(str(t), str(t))
        return {"dtype": dtype, "_type": "Value"}

    out = {}
    for f in schema:
        how = image_columns.get(f.name)
        if how == "List":
            out[f.name] = {"feature": {"_type": "Image"}, "_type": "List"}
        elif how == "Image":
            out[f.name] = {"_type": "Image"}
        else:
            out[f.name] = feature(f.type)
    return {"info": {"features": out}}


# -- the JSON formats ------------------------------------------------------------------------------
def image_file(image: dict) -> str:
    """Where an image is written in a JSON export: images/<sha256 of its bytes><ext> (once per image)."""
    data = image["bytes"]
    return f"images/{hashlib.sha256(data).hexdigest()[:20]}{extension(data)}"


def _human(prompt: str) -> dict:
    return {"from": "human", "value": IMAGE_TAG + prompt}


def to_povid(pairs: Iterable[dict]) -> list[dict]:
    out = []
    for p in pairs:
        human = _human(p["prompt"])
        out.append({
            "id": p["id"], "image": image_file(p["image"]),
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
            "id": p["item_id"], "image": image_file(p["image"]),
            "conversations": [_human(p["prompt"]), {"from": "gpt", "value": p["chosen"]}],
            "source_id": p.get("source_id"),
        })
    return out


def to_sharegpt(pairs: Iterable[dict]) -> list[dict]:
    return [{
        "id": p["id"], "images": [image_file(p["image"])],
        "conversations": [_human(p["prompt"])],
        "chosen": {"from": "gpt", "value": p["chosen"]},
        "rejected": {"from": "gpt", "value": p["rejected"]},
        "kind": p.get("kind"), "item_id": p["item_id"], **_weight(p),
    } for p in pairs]


JSON_CONVERTERS = {"povid": to_povid, "llava": to_llava, "sharegpt": to_sharegpt}


def image_files(pairs: Iterable[dict]) -> dict[str, bytes]:
    """relative path -> bytes, once per distinct image."""
    files: dict[str, bytes] = {}
    for p in pairs:
        files.setdefault(image_file(p["image"]), p["image"]["bytes"])
    return files
