"""Putting a finished export in place: OUT is replaced only by a complete export, never half-written.

The export is built in a temporary sibling of OUT (`.tmp-XXXXXXXX-<name>`) and swapped in when complete
(old OUT renamed away, new one renamed in, old one deleted); leftovers of killed runs are removed by the
next export of the same OUT. OUT carries a `povid-export.json` marker; a folder without it is never
replaced.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid

import pyarrow as pa
import pyarrow.fs as pafs

from povid_cli.core.errors import PovidError, UsageError
from povid_cli.core.fs import Location, resolve
from povid_cli.core.store import Dataset

MARKER = "povid-export.json"


def check_out(ds: Dataset, out: Location) -> None:
    """OUT must not be (or hold) DATA, and must be a povid export or an empty folder."""
    if type(out.fs) is type(ds.root.fs):
        o, d = out.path.rstrip("/\\"), ds.root.path.rstrip("/\\")
        if o == d or d.startswith(o + "/") or d.startswith(o + os.sep):
            raise UsageError(f"the export folder {out.url} would replace the dataset itself; choose another -o")
    if out.exists():
        if not out.is_dir():
            raise PovidError(f"{out.url} exists and is not a folder; refusing to replace it")
        names = out.listdir()
        if names and MARKER not in names:
            raise PovidError(f"{out.url} is not empty and is not a povid export (no {MARKER}); refusing to replace it")


def sibling(out: Location, prefix: str) -> Location:
    parent = out.parent()
    name = os.path.basename(out.path.rstrip("/"))
    return parent.join(f"{prefix}{uuid.uuid4().hex[:8]}-{name}")


def _move(fs: pafs.FileSystem, src: str, dst: str) -> None:
    if isinstance(fs, pafs.LocalFileSystem):
        os.rename(src, dst)  # atomic for a folder on POSIX
        return
    try:
        fs.move(src, dst)
    except (NotImplementedError, pa.ArrowNotImplementedError, OSError):
        # Object stores cannot rename folders: copy, then remove the source.
        pafs.copy_files(src, dst, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(src)


def swap_in(tmp: Location, out: Location) -> None:
    """Replace OUT by the complete export in `tmp`: old away, new in, old deleted."""
    old = None
    if out.exists():
        old = sibling(out, ".old-")
        _move(out.fs, out.path, old.path)
    try:
        _move(out.fs, tmp.path, out.path)
    except BaseException:
        if old is not None:  # put the previous export back
            _move(out.fs, old.path, out.path)
        raise
    if old is not None:
        old.delete()


def clean_leftovers(dest: str) -> None:
    """Remove half-built (.tmp-) and replaced (.old-) copies of DEST that a killed run left beside it."""
    loc = resolve(dest)
    if not loc.is_local:
        return
    parent, name = os.path.split(loc.path.rstrip(os.sep))
    pat = re.compile(r"^\.(tmp|old)-[0-9a-f]{8}-" + re.escape(name) + "$")
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for n in names:
        if pat.match(n):
            shutil.rmtree(os.path.join(parent, n), ignore_errors=True)
