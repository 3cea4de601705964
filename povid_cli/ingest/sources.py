"""The dispatcher: what kind of source a SRC is, and which reader reads it. Annotation text only.

A SRC is a local path, a file:// path or an fsspec / pyarrow URL (s3://, gs://, memory://, ...):
- a folder with `dataset_dict.json` or `state.json` + `*.arrow`: a `datasets.save_to_disk` folder (every split);
- a folder holding `povid-export.json`: a `povid export` output (its Parquet or JSON file);
- a folder holding `*.parquet` files (anywhere below, e.g. the Hub layout `data/train-*.parquet`): each file;
- any other folder: an image folder (readers/folder.py);
- `.parquet`, `.arrow` files; `.json` / `.jsonl` files (COCO, or a list of records); an image file.
Tables are matched to a layout by their columns (readers/layouts.py), after `--map`. A table whose
columns match no layout, a file that cannot be parsed, and a SRC that yields no record at all are
failed records that say why (the columns found, what the folder holds).
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Iterator

import pyarrow as pa

from povid_cli.core.errors import PovidError
from povid_cli.core.fs import resolve
from povid_cli.ingest.readers import coco, folder
from povid_cli.ingest.readers.layouts import Ctx, apply_map, recognise, unknown_layout
from povid_cli.ingest.readers.tables import TableError, arrow_table, json_table, parquet_table, parse_json
from povid_cli.ingest.record import DEFAULT_PROMPT, IMAGE_EXTS, ImageRoot, Record, bad_text, safe, source_label

__all__ = ["read_source", "side_data", "DEFAULT_PROMPT", "Record"]


def _parent(loc) -> str:
    return os.path.dirname(loc.path) if loc.is_local else posixpath.dirname(loc.url)


def _names(loc) -> list[str]:
    """A folder's entries; local ones through os (pyarrow cannot list a name that is not UTF-8)."""
    return sorted(os.listdir(loc.path)) if loc.is_local else loc.listdir()


def _ext(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def side_data(sources: list[str]) -> tuple[dict, dict]:
    """(COCO instances side data by image file name, parsed COCO documents by URL): the instances files
    among the sources are read once, before any record, so every captions file sees them."""
    side, docs = {}, {}
    for src in sources:
        loc = resolve(src)
        if _ext(loc.path) != ".json" or not loc.exists() or loc.is_dir():
            continue
        try:
            raw = loc.read_bytes()
        except OSError:
            continue
        if not raw.lstrip()[:1] == b"{":  # LLaVA-style lists are parsed once, by their reader
            continue
        try:
            data = parse_json(raw, ".json")
        except TableError:
            continue
        if coco.is_coco(data):
            docs[loc.url] = data
            if coco.is_instances(data):
                side.update(coco.side_data(data))
    return side, docs


def read_source(src: str, config, side: dict | None = None, docs: dict | None = None) -> Iterator[Record]:
    """Every record of one SRC, with failed text (lone surrogates) turned into failed records."""
    loc = resolve(src)
    if not loc.exists():
        raise PovidError(f"{src} does not exist")
    n = 0
    for rec in _read(loc, config, side or {}, docs or {}):
        n += 1
        if not rec.error and (why := bad_text(rec)):
            rec.fail(why, "bad_text")
        yield rec
    if n == 0:
        why = _why_empty(loc)
        if why:
            yield Record(loc.url, loc.url, source_label(loc.url, None)).fail(why, "empty_source")


def _why_empty(loc) -> str | None:
    """Why a SRC gave no record at all (None: a COCO instances file, which is side data)."""
    if not loc.is_dir():
        return None if _ext(loc.path) == ".json" else "holds no records"
    names = [n for n in _names(loc) if not n.startswith(".")]
    if not names:
        return "an empty folder: no images, Parquet, Arrow or annotation files"
    shown = ", ".join(safe(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
    return f"a folder with no images, Parquet, Arrow or povid export files in it (found: {shown})"


def _ctx(loc, file_url: str, config, side: dict, root: str | None = None, own_root: bool = False) -> Ctx:
    """The reader context of one file; its image root is --image-root, else `root` (the SRC folder), else the
    file's folder. An image folder is always its own root (own_root)."""
    root = root if own_root else (config.image_root or root or _parent(loc))
    return Ctx(src=loc.url, file=file_url, source=source_label(file_url, root), root=ImageRoot(root),
               prompt=config.prompt or DEFAULT_PROMPT, binarize=config.binarize, side=side)


def _read(loc, config, side: dict, docs: dict) -> Iterator[Record]:
    if loc.is_dir():
        yield from _folder(loc, config, side)
        return
    ext = _ext(loc.path)
    if ext in IMAGE_EXTS:
        yield folder.single(loc, _ctx(loc, loc.url, config, side, _parent(loc), own_root=True))
        return
    yield from _file(loc, loc, config, side, docs)


def _file(src_loc, loc, config, side: dict, docs: dict, root: str | None = None) -> Iterator[Record]:
    """One annotation or table file."""
    ctx = _ctx(loc, loc.url, config, side, root)
    ctx.src = src_loc.url
    mapping = dict(config.mapping())
    ext = _ext(loc.path)
    try:
        if ext == ".parquet":
            table = parquet_table(loc, ctx.root.root)
        elif ext == ".arrow":
            table = arrow_table(loc, ctx.root.root)
        else:
            data = docs.get(loc.url)
            if data is None:
                data = parse_json(loc.read_bytes(), ext)
            if coco.is_coco(data):
                if not coco.is_instances(data):  # instances files are side data (see side_data)
                    yield from coco.records(data, ctx)
                return
            table = json_table(loc, data)
    except (TableError, OSError) as e:
        yield ctx.record().fail(safe(e), "bad_source")
        return
    yield from _table(table, ctx, mapping)


def _table(table, ctx: Ctx, mapping: dict) -> Iterator[Record]:
    found = recognise(table.columns, mapping)
    if found is None:
        what = unknown_layout(table.columns) if table.columns else "holds no records"
        yield ctx.record().fail(what, "bad_source")
        return
    _, reader = found
    i = 0
    try:
        for i, row in enumerate(table.rows):
            yield from reader(apply_map(row, mapping) if isinstance(row, dict) else row, i, ctx)
    except (OSError, pa.ArrowException) as e:  # a file broken part way: the rows before it are kept
        yield ctx.record().fail(f"cannot read past row {i}: {safe(e)}", "bad_source")


def _folder(loc, config, side: dict) -> Iterator[Record]:
    names = _names(loc)
    if "dataset_dict.json" in names:  # a DatasetDict: one save_to_disk folder per split
        splits = json.loads(loc.join("dataset_dict.json").read_bytes()).get("splits") or []
        for split in splits:
            yield from _saved(loc, loc.join(split), config, side)
        return
    if "state.json" in names and any(n.endswith(".arrow") for n in names):
        yield from _saved(loc, loc, config, side)
        return
    if "povid-export.json" in names:
        marker = json.loads(loc.join("povid-export.json").read_bytes())
        for f in marker.get("files") or []:
            if not f.endswith("/"):
                yield from _file(loc, loc.join(*f.split("/")), config, side, {}, loc.url)
        return
    parquet = _parquet_files(loc)
    if parquet:
        for f in parquet:
            yield from _file(loc, f, config, side, {}, loc.url)
        return
    yield from folder.records(loc, _ctx(loc, loc.url, config, side, loc.path if loc.is_local else loc.url, own_root=True))


def _saved(src_loc, loc, config, side: dict) -> Iterator[Record]:
    state = json.loads(loc.join("state.json").read_bytes()) if loc.join("state.json").exists() else {}
    files = [d.get("filename") for d in state.get("_data_files") or [] if d.get("filename")]
    files = files or sorted(n for n in loc.listdir() if n.endswith(".arrow"))
    for f in files:
        yield from _file(src_loc, loc.join(f), config, side, {}, src_loc.url if not src_loc.is_local else src_loc.path)


def _parquet_files(loc) -> list:
    if loc.is_local:
        out = []
        for dirpath, dirnames, files in os.walk(loc.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out += [os.path.join(dirpath, f) for f in sorted(files) if f.endswith(".parquet") and not f.startswith(".")]
        return [resolve(p) for p in out]
    import pyarrow.fs as pafs

    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
    rels = sorted(posixpath.relpath(i.path, loc.path) for i in infos
                  if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    return [loc.join(*r.split("/")) for r in rels if not any(p.startswith(".") for p in r.split("/"))]
