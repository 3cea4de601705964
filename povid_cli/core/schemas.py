"""Arrow schemas of the tables every stage agrees on.

Images are `struct<bytes: binary, path: string>`: the layout of the Hugging Face `datasets` Image
feature. Every Parquet file the store writes carries the `datasets` features of its columns in its
`huggingface` metadata (`hf_metadata`, added by core/fs.py), so `datasets.load_dataset("parquet", ...)`
decodes image columns (and lists of images) as images without a cast.

An item is (images, prompt, chosen): `image` is its first image and `extra_images` the others (null for
the usual one-image item), so one-image code reads `image` as before. The rejected answers a source
gives for an item are not on the item: they are rows of `given` (shard k of `given` holds the given
pairs of the items of shard k), as many per item as the sources have.
"""

from __future__ import annotations

import pyarrow as pa

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
IMAGES = pa.list_(IMAGE)
# An object box: `bbox` is [x, y, w, h] in pixels of the stored (upright, normalised) image.
BOX = pa.struct([("label", pa.string()), ("bbox", pa.list_(pa.float64()))])

TASKS = ("caption", "vqa", "reasoning")

ITEMS = pa.schema([
    ("id", pa.string()),               # sha256(image hashes, prompt, chosen)[:16]: stable across runs and machines
    ("image", IMAGE),                  # the (first) image
    ("extra_images", IMAGES),          # the item's other images, in order (multi-image records), else null
    ("image_sha256", pa.string()),     # sha256 of the first image's source bytes
    ("width", pa.int32()),             # of the first image, as stored
    ("height", pa.int32()),
    ("prompt", pa.string()),           # the user turn, without <image> tags or chat template
    ("chosen", pa.string()),           # the ground-truth answer ("" when has_answer is false)
    ("has_answer", pa.bool_()),        # false when the source gives no (or an empty) answer
    ("task", pa.string()),             # caption | vqa | reasoning
    ("objects", pa.list_(pa.string())),  # ground-truth COCO objects when the source has them, else null
    ("boxes", pa.list_(BOX)),          # object boxes of the first image when the source has them, else null
    ("source", pa.string()),           # the record's file, relative to the image root, or its name
    ("source_id", pa.string()),        # the record's own id in that file, when it has one
    ("turn", pa.int32()),              # index of the (human, gpt) pair in a multi-turn conversation
])

# The rejected answers the sources give ("given pairs"), shard-aligned with items.
GIVEN = pa.schema([
    ("id", pa.string()),               # the pair id: core.stage.pair_id(item_id, "text", None, rejected)
    ("item_id", pa.string()),
    ("rejected", pa.string()),
    ("model", pa.string()),            # who wrote the rejected answer, when the source says (VLFeedback)
    ("source", pa.string()),           # the record that gave it (several records may give pairs to one item)
    ("source_id", pa.string()),
])


def item_images(row: dict) -> list[dict]:
    """Every image of an item or pair row, first one first (rows of older datasets have `image` only)."""
    first = row.get("image")
    return ([first] if first is not None else []) + list(row.get("extra_images") or [])


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
    ("image", IMAGE),                    # the (first) distorted image
    ("method", pa.string()),
    ("params", pa.string()),             # JSON
    ("seed", pa.int64()),
    ("extra_images", IMAGES),            # multi-image items: the other distorted images, in order, else null
    ("image_indices", pa.list_(pa.int32())),  # which item images `image` + `extra_images` stand for (null: all,
                                         # in order: a one-image item, or every image of a multi-image one)
    ("recipe", pa.string()),             # JSON: the distort options that rebuild the images from the item's
    ("sha256", pa.list_(pa.string())),   # ... and their checksums (image, then extra_images): with
                                         # `--store recipe` (default) the image bytes are null: stages/distort_recipe.py
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

# `corrected` (povid correct): the target model's own answers (sampled), minimally corrected.
CHANGE = pa.struct([("from", pa.string()), ("to", pa.string()), ("reason", pa.string())])

CORRECTED = pa.schema([
    ("id", pa.string()),                 # f"{sampled_id}#{i}": the i-th response of a sampled row
    ("item_id", pa.string()),
    ("sampled_id", pa.string()),
    ("response_index", pa.int32()),
    ("variant", pa.string()),            # the sampled row's variant: "clean" (sample --clean) or a distortion
    ("original", pa.string()),           # the model's answer, as sampled
    ("corrected", pa.string()),          # the same answer minimally corrected ("" when nothing of it is right)
    ("changes", pa.list_(CHANGE)),       # what was removed (to "") or changed, and why; empty: nothing to correct
    ("removed_objects", pa.list_(pa.string())),  # COCO categories the original names and the correction does not
    ("backend", pa.string()),
    ("model", pa.string()),              # the corrector's model (null for rules)
    ("prompt_version", pa.string()),
])

# `pairs` (filter) and what `export` reads. filter adds its score columns after these.
PAIRS = pa.schema([
    ("id", pa.string()),                 # stable pair id: sha256(item_id, kind, rejected)[:16]
    ("item_id", pa.string()),
    ("kind", pa.string()),               # text (hallucinate, given) | image (distort + sample) | corrected (correct)
                                         # | contrast (same answer, rejected side = a distorted image: rejected_image)
    ("prompt", pa.string()),
    ("chosen", pa.string()),
    ("rejected", pa.string()),
    ("image", IMAGE),                    # null: the item's images are kept once, in items (core/items.py attaches them)
    ("extra_images", IMAGES),            # the item's other clean images (multi-image items), else null
    ("variant", pa.string()),            # distortion variant for image pairs, else null
    ("task", pa.string()),
    ("source", pa.string()),
    ("source_id", pa.string()),
    ("rejected_image", IMAGE),           # contrast pairs: the rejected side's (first) image, a distorted variant
    ("rejected_extra_images", IMAGES),   # contrast pairs of multi-image items: the rejected side's other images
])


def variant_images(item: dict, distorted: dict) -> list[dict]:
    """The images a distorted row stands for, in the item's order: the item's images with the distorted ones in
    the positions `image_indices` names (every position when it is null); the others stay clean."""
    clean = item_images(item)
    got = item_images(distorted)
    positions = distorted.get("image_indices")
    if positions is None:
        positions = list(range(len(got)))
    if len(positions) != len(got) or any(not 0 <= p < len(clean) for p in positions):
        raise ValueError(f"distorted row {distorted.get('id')}: {len(got)} image(s) for positions {positions} of an "
                         f"item with {len(clean)}")
    out = list(clean)
    for p, im in zip(positions, got):
        out[p] = im
    return out


# -- the `datasets` features of a table, for the Parquet `huggingface` metadata --------------------------
def _feature(t: pa.DataType) -> dict:
    if t == IMAGE:
        return {"_type": "Image"}
    if pa.types.is_struct(t):
        return {t.field(i).name: _feature(t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return {"feature": _feature(t.value_type), "_type": "List"}
    dtype = {"string": "string", "large_string": "large_string", "int32": "int32", "int64": "int64",
             "double": "float64", "float": "float32", "bool": "bool", "binary": "binary"}.get(str(t), str(t))
    return {"dtype": dtype, "_type": "Value"}


def hf_features(schema: pa.Schema, image_columns: dict[str, str] | None = None) -> dict:
    """The `datasets` info dict of `schema`: image structs (and lists of them) as `Image` features. Columns
    named in `image_columns` ("Image" | "List") are forced to that, whatever their type."""
    out = {}
    for f in schema:
        how = (image_columns or {}).get(f.name)
        if how == "List":
            out[f.name] = {"feature": {"_type": "Image"}, "_type": "List"}
        elif how == "Image":
            out[f.name] = {"_type": "Image"}
        else:
            out[f.name] = _feature(f.type)
    return {"info": {"features": out}}


def has_images(t: pa.DataType) -> bool:
    if t == IMAGE:
        return True
    if pa.types.is_struct(t):
        return any(has_images(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return has_images(t.value_type)
    return False
