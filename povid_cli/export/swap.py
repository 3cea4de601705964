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


def new_version(out: Location) -> Location:
    """Where the next export of OUT is built: a version folder beside it (local), or a temporary sibling."""
    if not out.is_local:
        return sibling(out, ".tmp-")
    return _versions(out).join(uuid.uuid4().hex[:8])


def _versions(out: Location) -> Location:
    parent, name = os.path.split(out.path.rstrip(os.sep))
    return out.parent().join(f".{name}.versions")


def swap_in(tmp: Location, out: Location) -> None:
    """Make the complete export in `tmp` what OUT is, so that OUT is never missing nor half-written.

    Local: OUT is a symlink to the current version folder, replaced by an atomic rename of a new symlink
    (an export made by an older povid, a real folder, is exchanged with the link in one renameat2 call).
    Object stores have no rename: the old export is moved away and the new one copied in (a reader may
    find no OUT for that long; never a half-written one)."""
    if not out.is_local:
        return _swap_by_copy(tmp, out)
    parent = os.path.dirname(out.path.rstrip(os.sep))
    link = os.path.join(parent, f".tmp-{uuid.uuid4().hex[:8]}-{os.path.basename(out.path.rstrip(os.sep))}")
    os.symlink(os.path.relpath(tmp.path, parent), link)
    try:
        if os.path.islink(out.path) or not os.path.lexists(out.path):
            os.replace(link, out.path)  # atomic: readers see the old export or the new one
        else:  # a real folder (an export of an older povid): swap the two names in one call
            _exchange(link, out.path)
            shutil.rmtree(link, ignore_errors=True)  # now the old folder
    finally:
        if os.path.lexists(link) and os.path.islink(link):
            os.remove(link)
    clean_leftovers(out.url)


def _exchange(a: str, b: str) -> None:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); elsewhere two renames."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        fn = None
    if fn is not None:
        AT_FDCWD, RENAME_EXCHANGE = -100, 2
        if fn(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) == 0:
            return
    tmp = f"{b}.swap-{uuid.uuid4().hex[:8]}"  # the brief moment without b is unavoidable here
    os.rename(b, tmp)
    os.rename(a, b)
    os.rename(tmp, a)


def _swap_by_copy(tmp: Location, out: Location) -> None:
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
    """Remove what killed exports of DEST left: half-built (.tmp-) and replaced (.old-) copies beside it,
    and version folders OUT does not point to."""
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
            p = os.path.join(parent, n)
            os.remove(p) if os.path.islink(p) else shutil.rmtree(p, ignore_errors=True)
    versions = _versions(loc).path
    current = os.path.realpath(loc.path) if os.path.islink(loc.path) else None
    for v in os.listdir(versions) if os.path.isdir(versions) else []:
        if os.path.join(versions, v) != current:
            shutil.rmtree(os.path.join(versions, v), ignore_errors=True)
