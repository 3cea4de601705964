"""Arrow schemas of the tables every stage agrees on.

Images are `struct<bytes: binary, path: string>`: the layout of the Hugging Face `datasets` Image
feature, so `datasets.load_dataset("parquet", ...)` decodes them without help.
"""

from __future__ import annotations

import pyarrow as pa

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

TASKS = ("caption", "vqa", "reasoning")

ITEMS = pa.schema([
    ("id", pa.string()),               # sha256(image_sha256 + prompt)[:16]: stable across runs and machines
    ("image", IMAGE),
    ("image_sha256", pa.string()),     # sha256 of the source file's bytes
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("prompt", pa.string()),           # the user turn, without <image> tags
    ("chosen", pa.string()),           # the ground-truth answer ("" when has_answer is false)
    ("has_answer", pa.bool_()),        # false for images ingested without an answer (--prompt only)
    ("rejected", pa.string()),         # a ready dispreferred answer (POVID/TRL input), else null
    ("task", pa.string()),             # caption | vqa | reasoning
    ("objects", pa.list_(pa.string())),  # ground-truth COCO objects when the source has them, else null
    ("source", pa.string()),           # the file the record came from
    ("source_id", pa.string()),        # the record's own id in that file, when it has one
    ("turn", pa.int32()),              # index of the (human, gpt) pair in a multi-turn conversation
])


def image_struct(data: bytes, path: str | None = None) -> dict:
    return {"bytes": data, "path": path}


# -- what the stages after ingest write (each stage may add columns after these) ------------------------
# Every row has its own `id` and the `item_id` of the item it belongs to (runner joins on item_id).
EDIT = pa.struct([("from", pa.string()), ("to", pa.string()), ("type", pa.string())])

HALLUCINATED = pa.schema([
    ("id", pa.string()),                 # f"{item_id}-h{j}" (j = 0..n-1)
    ("item_id", pa.string()),
    ("rejected", pa.string()),
    ("hallucination_types", pa.list_(pa.string())),  # object | attribute | relation | reasoning
    ("edits", pa.list_(EDIT)),
    ("backend", pa.string()),
    ("model", pa.string()),
    ("prompt_version", pa.string()),
])

DISTORTED = pa.schema([
    ("id", pa.string()),                 # f"{item_id}-{variant}"
    ("item_id", pa.string()),
    ("variant", pa.string()),            # the method spec, e.g. "diffusion" or "blur:sigma=3"
    ("image", IMAGE),
    ("method", pa.string()),
    ("params", pa.string()),             # JSON
    ("seed", pa.int64()),
])

SAMPLED = pa.schema([
    ("id", pa.string()),                 # f"{item_id}-{variant}"
    ("item_id", pa.string()),
    ("variant", pa.string()),
    ("responses", pa.list_(pa.string())),
    ("finish_reasons", pa.list_(pa.string())),
    ("logprobs", pa.list_(pa.float64())),  # mean token log-prob under the clean image (--logprobs), else null
    ("model", pa.string()),
    ("backend", pa.string()),
    ("temperature", pa.float64()),
    ("top_p", pa.float64()),
    ("max_tokens", pa.int32()),
    ("n", pa.int32()),
])

# `pairs` (filter) and what `export` reads. filter adds its score columns after these.
PAIRS = pa.schema([
    ("id", pa.string()),                 # stable pair id: sha256(item_id, kind, rejected)[:16]
    ("item_id", pa.string()),
    ("kind", pa.string()),               # text (hallucinate) | image (distort + sample)
    ("prompt", pa.string()),
    ("chosen", pa.string()),
    ("rejected", pa.string()),
    ("image", IMAGE),                    # the clean image
    ("variant", pa.string()),            # distortion variant for image pairs, else null
    ("task", pa.string()),
    ("source", pa.string()),
    ("source_id", pa.string()),
])
