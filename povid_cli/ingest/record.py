"""What a reader yields: `Record`s, plus the helpers every reader shares (prompt cleaning, task guess,
image paths resolved inside the image root, text checks).

A record is one (images, prompt, chosen) read from a source, with the rejected answers the source gives
for it: one turn of a LLaVA conversation, one row of a preference table, one image of a folder. It
either becomes an item (new, or already in DATA: its rejected answers are then added to that item),
or is skipped with a reason (`skip`: text_only, no_answer, no_pair), or failed (`error`). Readers read
annotation text only: an image is a reference (`ImageRef`) the ingest workers read.

ImageRef, a tuple (it pickles small and hashes, so each image is read once however many records use it):
- ("file", path): a local file, already checked to be inside the image root;
- ("url", url): a file under a URL image root (fsspec / pyarrow);
- ("cell", file, fmt, row, column, index, root): an image inside a Parquet ("parquet") or Arrow IPC
  ("arrow", `datasets.save_to_disk`) file: `index` into a list column, 0 otherwise; a cell that holds
  only a path is read from `root` (checked like any other path);
- ("b64", text): base64 image bytes written inside a JSON record.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
DEFAULT_PROMPT = "Describe this image in detail."
SKIP_REASONS = {
    "text_only": "the record has no image",
    "no_answer": "the record has no answer turn",
    "no_pair": "the ratings give no preference (every completion ties, or fewer than two are rated)",
}

_IMAGE_TAG = re.compile(r"\s*<image>\s*", re.IGNORECASE)
_VISION_TOKENS = re.compile(r"<\|vision_start\|>.*?<\|vision_end\|>|<\|image_pad\|>|<\|image\|>", re.DOTALL)
# Chat templates baked into prompts (mDPO, LLaVA-v1 style data): keep the words of the last user turn.
_TEMPLATES = [
    re.compile(r"^.*\bUSER:\s*(?P<q>.*?)\s*(?:ASSISTANT:\s*)?$", re.DOTALL),                  # vicuna / llava v1
    re.compile(r"^.*<\|im_start\|>user\s*(?P<q>.*?)\s*(?:<\|im_end\|>.*)?$", re.DOTALL),       # chatml (qwen)
    re.compile(r"^.*\[INST\]\s*(?P<q>.*?)\s*(?:\[/INST\].*)?$", re.DOTALL),                    # llama-2 / mistral
    re.compile(r"^.*###\s*Human:\s*(?P<q>.*?)\s*(?:###\s*Assistant:.*)?$", re.DOTALL),          # "### Human:"
]
_CAPTION_PROMPT = re.compile(
    r"\b(describe|description|caption|what (is|are|do you see) (in|shown in|happening in) (the|this) (image|picture|photo)"
    r"|what do you see)\b", re.IGNORECASE)
_REASONING_PROMPT = re.compile(r"\b(why|how (come|does|do|did|would|could|can|might)|explain|reason|what would happen|what might|infer)\b", re.IGNORECASE)


@dataclass
class Record:
    """One (images, prompt, chosen) and its given rejected answers. `error` set: failed; `skip` set: skipped."""

    src: str                      # the SRC argument it was read from (accounting, replacing old failures)
    file: str                     # the file (or folder) it came from, as a path or URL
    source: str = ""              # what items store in `source`: relative to the image root, or the file's name
    source_id: str | None = None
    images: list = field(default_factory=list)        # ImageRef tuples
    image_names: list = field(default_factory=list)   # what each image struct's `path` holds
    prompt: str = ""
    chosen: str = ""
    has_answer: bool = True
    rejected: list = field(default_factory=list)      # [(text, model or None)]: the given pairs
    task: str | None = None
    objects: list | None = None
    boxes: list | None = None     # [{label, bbox: [x, y, w, h]}] on the first image
    box_size: tuple | None = None  # (width, height) the boxes are measured in, when the source says
    turn: int = 0
    error: str | None = None
    error_kind: str = "invalid"
    skip: str | None = None

    def fail(self, error: str, kind: str = "invalid") -> "Record":
        self.error, self.error_kind = error, kind
        return self


def clean_prompt(text) -> str:
    """The user's words: chat template, vision tokens and <image> tags removed."""
    text = _VISION_TOKENS.sub(" ", text if isinstance(text, str) else "")
    for tpl in _TEMPLATES:
        m = tpl.match(text)
        if m and m.group("q").strip():
            text = m.group("q")
            break
    return _IMAGE_TAG.sub(" ", text).strip()


def infer_task(prompt: str, answer: str = "") -> str:
    """caption for describe-style prompts, reasoning for why/how/explain, else vqa."""
    if _CAPTION_PROMPT.search(prompt or ""):
        return "caption"
    if _REASONING_PROMPT.search(prompt or ""):
        return "reasoning"
    return "vqa"


def safe(text) -> str:
    """Text that can be stored whatever it holds (lone surrogates, undecodable file names escaped)."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def bad_text(rec: Record) -> str | None:
    """Why a record's text cannot be stored (a lone surrogate, say), or None."""
    fields = [("prompt", rec.prompt), ("chosen", rec.chosen), ("source_id", rec.source_id), ("source", rec.source),
              ("task", rec.task)]
    fields += [("rejected", t) for t, _ in rec.rejected] + [("image", n) for n in rec.image_names]
    fields += [("objects", o) for o in rec.objects or []] + [("boxes", b.get("label")) for b in rec.boxes or []]
    for name, value in fields:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"{name} is not valid Unicode text ({e.reason} at position {e.start})"
    return None


def source_label(path: str, root: str | None) -> str:
    """What `source` stores for a file: its path relative to the image root when inside it, else its name."""
    if root and not _is_url(path) and not _is_url(root):
        r = os.path.realpath(root)
        p = os.path.realpath(path)
        if p != r and os.path.commonpath([r, p]) == r:
            return os.path.relpath(p, r).replace(os.sep, "/")
    elif root and _is_url(path) and path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1:]
    return posixpath.basename(path.rstrip("/")) if _is_url(path) else os.path.basename(path.rstrip(os.sep))


def _is_url(p: str) -> bool:
    return "://" in p and not p.startswith("file://")


class ImageRoot:
    """Where an annotation's image paths resolve: a local folder or a URL. Nothing outside it is read."""

    def __init__(self, root: str):
        self.url = _is_url(root)
        self.root = root.rstrip("/") if self.url else os.path.realpath(root.removeprefix("file://"))

    def resolve(self, rel) -> tuple:
        """An ImageRef for `rel`; ValueError (one line) for a missing, absolute-outside or escaping path.
        Absolute paths are accepted when they lie inside the root."""
        if not rel or not isinstance(rel, str):
            raise ValueError("record has no image path")
        if "\x00" in rel:
            raise ValueError(f"image path with a NUL byte refused: {safe(repr(rel))}")
        if self.url:
            return ("url", self._resolve_url(rel))
        absolute = os.path.isabs(rel) or bool(re.match(r"^[a-zA-Z]:[\\/]", rel))
        full = os.path.realpath(rel if absolute else os.path.join(self.root, rel))
        if os.path.commonpath([self.root, full]) != self.root:
            if absolute:
                raise ValueError(f"absolute image path refused: {safe(rel)} is outside the image root {self.root}")
            raise ValueError(f"image path escapes the image root: {safe(repr(rel))}")
        return ("file", full)

    def _resolve_url(self, rel: str) -> str:
        if _is_url(rel):
            full = rel
        elif rel.startswith("/"):
            raise ValueError(f"absolute image path refused: {safe(rel)} is outside the image root {self.root}")
        else:
            full = self.root + "/" + rel
        proto, _, path = full.partition("://")
        norm = posixpath.normpath(path)
        base = posixpath.normpath(self.root.partition("://")[2])
        if not (norm == base or norm.startswith(base.rstrip("/") + "/")) or proto != self.root.partition("://")[0]:
            raise ValueError(f"image path escapes the image root: {safe(repr(rel))}")
        return f"{proto}://{norm}"

    def exists(self, ref: tuple) -> bool:
        return ref[0] != "file" or os.path.exists(ref[1])


__all__ = ["Record", "ImageRoot", "clean_prompt", "infer_task", "safe", "bad_text", "source_label", "IMAGE_EXTS",
           "DEFAULT_PROMPT", "SKIP_REASONS"]
