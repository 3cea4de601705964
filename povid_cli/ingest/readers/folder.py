"""Image folders (searched recursively, local or URL) and single image files.

`NAME.txt` beside `NAME.jpg` is the answer; without one the image is a record with --prompt and an empty
answer (`has_answer = false`). A file name that is not valid UTF-8 is a failed record (it could not be
stored or exported), the rest of the folder is ingested. Symlinks pointing outside the folder are refused.
"""

from __future__ import annotations

import os
import posixpath
from typing import Iterator

from povid_cli.ingest.readers.layouts import Ctx
from povid_cli.ingest.record import IMAGE_EXTS, Record, infer_task, safe


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTS and not name.startswith(".")


def local_images(folder: str) -> Iterator[str]:
    """Image files under `folder`, sorted, hidden files and folders left out."""
    for dirpath, dirnames, files in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(files):
            if is_image(name):
                yield os.path.join(dirpath, name)


def url_images(loc) -> list[str]:
    import pyarrow.fs as pafs

    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
    rels = sorted(posixpath.relpath(i.path, loc.path) for i in infos if i.type == pafs.FileType.File)
    return [r for r in rels if is_image(posixpath.basename(r)) and not any(p.startswith(".") for p in r.split("/"))]


def records(loc, ctx: Ctx) -> Iterator[Record]:
    if loc.is_local:
        for path in local_images(loc.path):
            yield _local(loc.path, path, ctx)
    else:
        for rel in url_images(loc):
            yield _record(ctx, rel, _sidecar_url(loc, rel))


def single(loc, ctx: Ctx) -> Record:
    """One image file given as SRC (its folder is the image root)."""
    if loc.is_local:
        return _local(os.path.dirname(loc.path), loc.path, ctx)
    parent = loc.parent()
    return _record(ctx, posixpath.basename(loc.path), _sidecar_url(parent, posixpath.basename(loc.path)))


def _local(root: str, path: str, ctx: Ctx) -> Record:
    rel = os.path.relpath(path, root)
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        return ctx.record(safe(rel)).fail(f"file name is not valid UTF-8: {raw!r}", "bad_name")
    sidecar = os.path.splitext(path)[0] + ".txt"
    answer = ""
    if os.path.isfile(sidecar):
        with open(sidecar, encoding="utf-8", errors="replace") as f:
            answer = f.read().strip()
    return _record(ctx, rel.replace(os.sep, "/"), answer)


def _sidecar_url(loc, rel: str) -> str:
    side = loc.join(*(os.path.splitext(rel)[0] + ".txt").split("/"))
    try:
        return side.read_bytes().decode("utf-8", "replace").strip() if side.exists() else ""
    except OSError:
        return ""


def _record(ctx: Ctx, rel: str, answer: str) -> Record:
    rec = ctx.record(rel, prompt=ctx.prompt, chosen=answer, has_answer=bool(answer), task=infer_task(ctx.prompt, answer))
    rec.source = rel  # the file the record came from, relative to the folder (its image root)
    try:
        rec.images, rec.image_names = ctx.images(rel)
    except ValueError as e:
        rec.fail(str(e), "bad_path")
    return rec


__all__ = ["records", "single", "is_image", "local_images", "url_images"]
