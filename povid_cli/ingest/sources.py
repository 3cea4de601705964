"""Readers that turn what users have (annotation files, image folders, TRL Parquet) into ingest records.

Each reader yields `Record`s: a reference to image bytes plus prompt/answer fields, or a record that
already failed (bad JSON, missing image, a path escaping the image root). Readers read annotation
files only; image bytes are read later, batch by batch, by the ingest runner.

Formats (detected from content, not only the extension):
- LLaVA JSON / JSONL: `[{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}]`;
  every (human, gpt) pair of a multi-turn conversation becomes one item; `<image>` tags are removed.
- POVID JSON: LLaVA records with `rejected_conversations`: the rejected answer is kept.
- COCO captions JSON (`images` + `annotations` with `caption`), optionally with instances JSON
  (`annotations` with `category_id` + `categories`) for ground-truth `objects`.
- An image folder, searched recursively: `NAME.txt` beside `NAME.jpg` is the answer; without one the
  image is ingested with `--prompt` and an empty answer (`has_answer = false`).
- TRL-format Parquet: `images`/`image`, `prompt`, `chosen`, `rejected` (plain or conversational).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Iterator

from povid_cli.core.errors import PovidError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
DEFAULT_PROMPT = "Describe this image in detail."
_IMAGE_TAG = re.compile(r"\s*<image>\s*", re.IGNORECASE)
_CAPTION_PROMPT = re.compile(
    r"\b(describe|description|caption|what (is|are|do you see) (in|shown in|happening in) (the|this) (image|picture|photo)"
    r"|what do you see)\b", re.IGNORECASE)
_REASONING_PROMPT = re.compile(r"\b(why|how (come|does|do|did|would|could|can|might)|explain|reason|what would happen|what might|infer)\b", re.IGNORECASE)


@dataclass
class Record:
    """One (image, prompt, answer) before its image is read. `error` set: the record failed already."""

    source: str
    source_id: str | None = None
    image_path: str | None = None  # a local file path (checked to be inside its root)
    image_ref: tuple[str, int, str, int] | None = None  # an image embedded in a Parquet source: (file, row, column, index)
    image_name: str | None = None  # what is stored in the image struct's `path`
    prompt: str = ""
    chosen: str = ""
    has_answer: bool = True
    rejected: str | None = None
    task: str | None = None
    objects: list[str] | None = None
    turn: int = 0
    error: str | None = None
    error_kind: str = "invalid"
    extra: dict = field(default_factory=dict)


def clean_prompt(text: str) -> str:
    return _IMAGE_TAG.sub(" ", text or "").strip()


def infer_task(prompt: str, answer: str = "") -> str:
    """caption for describe-style prompts, reasoning for why/how/explain, else vqa."""
    if _CAPTION_PROMPT.search(prompt or ""):
        return "caption"
    if _REASONING_PROMPT.search(prompt or ""):
        return "reasoning"
    return "vqa"


def resolve_inside(root: str, rel: str) -> str:
    """Resolve an annotation's image path inside root; refuse absolute paths and escapes (../, symlinks)."""
    if not rel or not isinstance(rel, str):
        raise ValueError("record has no image path")
    if os.path.isabs(rel) or re.match(r"^[a-zA-Z]:[\\/]", rel) or "\x00" in rel:
        raise ValueError(f"absolute image path refused: {rel!r} (paths must be relative to the image root)")
    root_real = os.path.realpath(root)
    full = os.path.realpath(os.path.join(root_real, rel))
    if os.path.commonpath([root_real, full]) != root_real:
        raise ValueError(f"image path escapes the image root: {rel!r}")
    return full


# -- dispatch ---------------------------------------------------------------------------------------
def read_source(src: str, image_root: str | None, prompt: str | None, instances: dict[str, list[str]] | None = None) -> Iterator[Record]:
    """All records of one SRC (file or folder)."""
    if "://" in src and not src.startswith("file://"):
        raise PovidError(f"{src}: ingest reads local files and folders; copy remote sources first (DATA itself may be remote)")
    src = os.path.abspath(os.path.expanduser(src.removeprefix("file://")))
    if not os.path.exists(src):
        raise PovidError(f"{src} does not exist")
    if os.path.isdir(src):
        yield from read_image_folder(src, prompt)
        return
    ext = os.path.splitext(src)[1].lower()
    if ext in IMAGE_EXTS:
        yield from _folder_record(os.path.dirname(src), src, prompt)
        return
    if ext == ".parquet":
        yield from read_trl_parquet(src)
        return
    root = image_root or os.path.dirname(src)
    try:
        with open(src, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        yield Record(source=src, error=f"cannot read annotation file: {e}", error_kind="bad_source")
        return
    data, jsonl_error = _parse_json_or_jsonl(text, ext)
    if data is None:
        yield Record(source=src, error=f"not valid JSON or JSONL: {jsonl_error}", error_kind="bad_source")
        return
    if isinstance(data, dict) and "annotations" in data:
        yield from read_coco(src, data, root, prompt, instances)
    elif isinstance(data, list):
        yield from read_llava(src, data, root)
    else:
        yield Record(source=src, error="unrecognised annotation format (expected a LLaVA/POVID list or COCO JSON)",
                     error_kind="bad_source")


def _parse_json_or_jsonl(text: str, ext: str):
    try:
        return json.loads(text), None
    except ValueError as e:
        first_error = str(e)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None, "empty file"
    out = []
    for i, ln in enumerate(lines, 1):
        try:
            out.append(json.loads(ln))
        except ValueError as e:
            return None, (first_error if ext != ".jsonl" else f"line {i}: {e}")
    return out, None


def collect_instances(src: str) -> dict[str, list[str]] | None:
    """file_name -> sorted object categories, if src is a COCO instances JSON."""
    if not src.endswith(".json") or not os.path.isfile(src):
        return None
    try:
        with open(src, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and "categories" in data and "annotations" in data):
        return None
    anns = data["annotations"]
    if not anns or "category_id" not in anns[0] or any("caption" in a for a in anns[:5]):
        return None
    cats = {c["id"]: c["name"] for c in data["categories"]}
    files = {im["id"]: im.get("file_name") for im in data.get("images", [])}
    objs: dict[str, set] = {}
    for a in anns:
        name = cats.get(a.get("category_id"))
        fn = files.get(a.get("image_id"))
        if name and fn:
            objs.setdefault(fn, set()).add(name)
    return {fn: sorted(v) for fn, v in objs.items()}


# -- LLaVA / POVID ----------------------------------------------------------------------------------
def _turns(conv) -> list[tuple[str, str]]:
    pairs = []
    pending = None
    for msg in conv or []:
        if not isinstance(msg, dict):
            continue
        who = (msg.get("from") or msg.get("role") or "").lower()
        val = msg.get("value", msg.get("content", ""))
        if isinstance(val, list):  # OpenAI-style content parts
            val = " ".join(p.get("text", "") for p in val if isinstance(p, dict))
        if who in ("human", "user"):
            pending = val
        elif who in ("gpt", "assistant") and pending is not None:
            pairs.append((pending, val))
            pending = None
    return pairs


def read_llava(src: str, records: list, root: str) -> Iterator[Record]:
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            yield Record(source=src, source_id=str(i), error="record is not a JSON object")
            continue
        sid = str(rec.get("id", i))
        img = rec.get("image")
        if isinstance(img, list):
            img = img[0] if img else None
        objects = rec.get("objects")
        objects = [str(o) for o in objects] if isinstance(objects, list) else None
        turns = _turns(rec.get("conversations"))
        if not turns:
            yield Record(source=src, source_id=sid, error="record has no (human, gpt) turn in `conversations`")
            continue
        rejected_turns = _turns(rec.get("rejected_conversations")) if "rejected_conversations" in rec else []
        if img is None:
            yield Record(source=src, source_id=sid, error="record has no image (text-only records are not supported)")
            continue
        try:
            path = resolve_inside(root, img)
        except ValueError as e:
            yield Record(source=src, source_id=sid, error=str(e), error_kind="bad_path")
            continue
        for t, (human, gpt) in enumerate(turns):
            prompt = clean_prompt(human)
            rejected = rejected_turns[t][1] if t < len(rejected_turns) else None
            yield Record(source=src, source_id=sid, image_path=path, image_name=img, prompt=prompt,
                         chosen=(gpt or "").strip(), rejected=rejected.strip() if rejected else None,
                         task=rec.get("task") or infer_task(prompt, gpt), objects=objects, turn=t)


# -- COCO -------------------------------------------------------------------------------------------
def read_coco(src: str, data: dict, root: str, prompt: str | None, instances: dict | None) -> Iterator[Record]:
    images = {im["id"]: im for im in data.get("images", []) if isinstance(im, dict) and "id" in im}
    anns = data.get("annotations") or []
    if anns and "caption" not in anns[0]:
        return  # an instances file: used for `objects` only (see collect_instances)
    # COCO has ~5 captions per image; POVID's prompts pair one answer per (image, prompt): keep the longest.
    best: dict = {}
    for a in anns:
        cap = (a.get("caption") or "").strip()
        iid = a.get("image_id")
        if cap and (iid not in best or len(cap) > len(best[iid])):
            best[iid] = cap
    for iid, cap in best.items():
        im = images.get(iid)
        if im is None:
            yield Record(source=src, source_id=str(iid), error=f"caption for unknown image_id {iid}")
            continue
        try:
            path = resolve_inside(root, im.get("file_name", ""))
        except ValueError as e:
            yield Record(source=src, source_id=str(iid), error=str(e), error_kind="bad_path")
            continue
        fn = im.get("file_name")
        p = prompt or DEFAULT_PROMPT
        yield Record(source=src, source_id=str(iid), image_path=path, image_name=fn, prompt=p, chosen=cap,
                     task="caption", objects=(instances or {}).get(fn))


# -- image folders ----------------------------------------------------------------------------------
def read_image_folder(folder: str, prompt: str | None) -> Iterator[Record]:
    for dirpath, dirnames, files in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in IMAGE_EXTS and not name.startswith("."):
                yield from _folder_record(folder, os.path.join(dirpath, name), prompt)


def _folder_record(root: str, path: str, prompt: str | None) -> Iterator[Record]:
    rel = os.path.relpath(path, root)
    try:
        full = resolve_inside(root, rel)
    except ValueError as e:
        yield Record(source=path, source_id=rel, error=str(e), error_kind="bad_path")
        return
    sidecar = os.path.splitext(path)[0] + ".txt"
    answer = ""
    if os.path.isfile(sidecar):
        with open(sidecar, encoding="utf-8", errors="replace") as f:
            answer = f.read().strip()
    p = prompt or DEFAULT_PROMPT
    yield Record(source=path, source_id=rel, image_path=full, image_name=rel, prompt=p, chosen=answer,
                 has_answer=bool(answer), task=infer_task(p, answer))


# -- TRL Parquet -------------------------------------------------------------------------------------
def _message_text(value, role: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    texts = []
    for m in value if isinstance(value, list) else [value]:
        if not isinstance(m, dict):
            continue
        if m.get("role", role) != role:
            continue
        c = m.get("content")
        if isinstance(c, str):
            texts.append(c)
        elif isinstance(c, list):
            texts.extend(p.get("text") or "" for p in c if isinstance(p, dict) and p.get("type") == "text")
    return "\n".join(t for t in texts if t)


def read_trl_parquet(src: str) -> Iterator[Record]:
    """TRL preference rows; the images stay in the file (the ingest tasks read them), only the text is read here."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(src)
    except Exception as e:  # noqa: BLE001
        yield Record(source=src, error=f"not a readable Parquet file: {e}", error_kind="bad_source")
        return
    names = set(pf.schema_arrow.names)
    if "prompt" not in names or "chosen" not in names:
        yield Record(source=src, error="Parquet file has no prompt/chosen columns (expected TRL preference format)",
                     error_kind="bad_source")
        return
    image_col = "images" if "images" in names else "image" if "image" in names else None
    text_cols = [c for c in pf.schema_arrow.names if c not in ("images", "image")]
    n = 0
    for batch in pf.iter_batches(batch_size=1024, columns=text_cols):
        for row in batch.to_pylist():
            sid = str(row.get("id", n))
            n += 1
            if image_col is None:
                yield Record(source=src, source_id=sid, error="row has no embedded image bytes")
                continue
            prompt = clean_prompt(_message_text(row.get("prompt"), "user"))
            chosen = _message_text(row.get("chosen"), "assistant").strip()
            rejected = _message_text(row.get("rejected"), "assistant").strip() or None
            yield Record(source=src, source_id=sid, image_ref=(src, n - 1, image_col, 0),
                         prompt=prompt, chosen=chosen, rejected=rejected, has_answer=bool(chosen),
                         task=row.get("task") or infer_task(prompt, chosen))
