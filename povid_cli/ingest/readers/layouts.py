"""Which layout a table is, from its column names, and what every layout reader shares (`Ctx`).

Layouts, tried in this order (the first whose columns are all there wins):
| layout | columns |
|---|---|
| POVID | `conversations`, `rejected_conversations`, `image` |
| ShareGPT preference (LLaMA-Factory, `povid export --format sharegpt`) | `conversations`, `chosen`, `rejected`, `images` |
| LLaVA | `conversations`, `image` (a path or a list of paths; absent: text-only) |
| VLFeedback | `prompt`, `completions` [{model, response, annotations}], `image` or `img_path` |
| OPA-DPO | `queries`, `original_generate_response`, `AI_pseudo_response`, `standard_response`, `image_bytes` |
| HA-DPO | `image_id`, `chosen` and `rejected` (lists, zipped), optional `question`; images `<image_id>.jpg` |
| RLAIF-V | `question`, `chosen`, `rejected`, `image` (or `image_path`) |
| mDPO | `img_path`, `prompt` (chat template inside), `chosen`, `rejected` |
| TRL | `prompt`, `chosen`, `rejected` (strings or messages), `images` / `image` |
| TRL, implicit prompt | `chosen`, `rejected` as whole conversations (user turn first), `images` / `image` |
| prompt + answer | `prompt` (or `question`), `chosen`: items without given pairs |
`--map FIELD=COLUMN,...` renames a source's columns onto these names first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from povid_cli.ingest.readers.tables import Cells
from povid_cli.ingest.record import DEFAULT_PROMPT, ImageRoot, Record, safe

IMAGE_COLUMNS = ("images", "image", "img_path", "image_path", "image_bytes")
PROMPT_COLUMNS = ("prompt", "question", "query", "queries")
ID_COLUMNS = ("id", "idx", "question_id", "image_id")


@dataclass
class Ctx:
    """What a layout reader needs for one table: where it came from, the image root, the options."""

    src: str
    file: str
    source: str               # `source` of its items
    root: ImageRoot
    prompt: str = DEFAULT_PROMPT
    binarize: str = "best-worst"
    image_search: tuple = ("VG_100K", "VG_100K_2")  # folders also tried for id-named images (Visual Genome's parts)
    side: dict = field(default_factory=dict)  # COCO instances: file name -> {objects, boxes, size}

    def record(self, source_id=None, **kw) -> Record:
        return Record(self.src, self.file, self.source, None if source_id is None else str(source_id), **kw)

    def images(self, value) -> tuple[list, list]:
        """(ImageRefs, names) of a cell: table `Cells`, a path, a list of paths, {bytes, path} dicts. ValueError
        (a path outside the image root, say) fails the record."""
        if value is None or value == "":  # no image: a text-only record
            return [], []
        if isinstance(value, Cells):
            return [r for r, _ in value], [n for _, n in value]
        if isinstance(value, (list, tuple)):
            refs, names = [], []
            for v in value:
                r, n = self.images(v)
                refs += r
                names += n
            return refs, names
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if isinstance(data, str) and data:
                return [("b64", data)], [path if isinstance(path, str) else None]
            return self.images(path) if path else ([], [])
        if isinstance(value, str):
            ref = self.root.resolve(value)
            return [ref], [_name(ref, value, self.root)]
        raise ValueError(f"unreadable image value of type {type(value).__name__}")

    def image_by_id(self, image_id) -> tuple[list, list]:
        """`<id>.jpg` under the image root, or under one of `image_search`'s folders (the first that exists)."""
        name = f"{image_id}.jpg"
        first = None
        for folder in ("",) + tuple(self.image_search):
            ref = self.root.resolve(os.path.join(folder, name) if folder else name)
            first = first or ref
            if self.root.exists(ref):
                return [ref], [_name(ref, name, self.root)]
        return [first], [name]


def _name(ref: tuple, given: str, root: ImageRoot) -> str:
    """The path an image struct keeps: relative to the image root (absolute paths given inside it too)."""
    if ref[0] == "file" and os.path.isabs(given):
        return os.path.relpath(ref[1], root.root).replace(os.sep, "/")
    return given


def first(row: dict, names) -> object:
    for n in names:
        if row.get(n) is not None:
            return row[n]
    return None


def apply_map(row: dict, mapping: dict[str, str]) -> dict:
    if not mapping:
        return row
    out = dict(row)
    for fld, col in mapping.items():
        out[fld] = row.get(col)
    return out


def recognise(columns, mapping: dict[str, str]):
    """(layout name, reader) for a table with these columns (after --map), or None."""
    from povid_cli.ingest.readers import llava, preference

    c = set(columns) | set(mapping)
    has_pair = "chosen" in c and ("rejected" in c or "reject" in c)
    if "conversations" in c:
        if "rejected_conversations" in c:
            return "POVID", llava.records
        if has_pair:
            return "ShareGPT preference", llava.sharegpt
        return "LLaVA", llava.records
    if "completions" in c:
        return "VLFeedback", preference.vlfeedback
    if "original_generate_response" in c:
        return "OPA-DPO", preference.opa_dpo
    if has_pair and "image_id" in c and not c & set(IMAGE_COLUMNS):
        return "HA-DPO", preference.ha_dpo
    if has_pair:
        name = ("RLAIF-V" if "question" in c else "mDPO" if "img_path" in c else
                "TRL" if "prompt" in c else "TRL (implicit prompt)")
        return name, preference.table
    if "chosen" in c and c & set(PROMPT_COLUMNS):
        return "prompt + answer", preference.table
    return None


def unknown_layout(columns) -> str:
    cols = ", ".join(safe(c) for c in list(columns)[:20]) or "none"
    return (f"no known layout (columns: {cols}); known: LLaVA/POVID "
            "conversations, TRL prompt/chosen/rejected, RLAIF-V question/chosen/rejected, VLFeedback completions, "
            "HA-DPO, mDPO, OPA-DPO; map yours with --map prompt=COLUMN,chosen=COLUMN,image=COLUMN")


__all__ = ["Ctx", "recognise", "apply_map", "unknown_layout", "first", "IMAGE_COLUMNS",
           "PROMPT_COLUMNS", "ID_COLUMNS"]
