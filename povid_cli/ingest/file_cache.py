"""Ingest's memory of the files it hashed: (path, size, mtime) -> sha256, in DATA/cache/ingest-files.parquet.

A cron refresh of a folder of a million photos must not read a million photos to find the hundred new
ones: a local image file whose size and modification time are what they were when it was hashed is not
read again (its hash, hence its item id, is known). A file whose size or mtime changed is hashed again.
The cost of the shortcut: a file rewritten with other content of the very same size within the same
mtime tick is taken for the old one (rsync without checksums makes the same trade).
"""

from __future__ import annotations

import os

import pyarrow as pa

from povid_cli.core.store import Dataset

NAME = "ingest-files.parquet"
SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("sha256", pa.string())])


def stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class FileCache:
    def __init__(self, ds: Dataset):
        self.loc = ds.root.join("cache", NAME)
        self.known: dict[str, tuple[int, int, str]] = {}
        self.dirty = False
        if self.loc.exists():
            try:
                for r in self.loc.read_parquet().to_pylist():
                    self.known[r["path"]] = (r["size"], r["mtime_ns"], r["sha256"])
            except (OSError, pa.ArrowInvalid):
                self.known = {}  # a broken cache is only a slower run: every file is hashed again

    def get(self, path: str, st: tuple[int, int] | None) -> str | None:
        hit = self.known.get(path)
        return hit[2] if hit is not None and st is not None and hit[:2] == st else None

    def put(self, path: str, st: tuple[int, int] | None, sha: str) -> None:
        if st is not None and self.known.get(path) != (*st, sha):
            self.known[path] = (*st, sha)
            self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        rows = [{"path": p, "size": s, "mtime_ns": m, "sha256": h} for p, (s, m, h) in self.known.items()]
        try:
            self.loc.write_parquet_atomic(pa.Table.from_pylist(rows, schema=SCHEMA))
        except OSError:
            pass  # a cache that cannot be written costs time on the next run, nothing else
        self.dirty = False
