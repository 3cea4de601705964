"""Local paths and remote URLs (s3://, gs://, hdfs://, anything fsspec knows) behind one small API.

pyarrow's own filesystems are used where pyarrow has one (local, s3, gs, hdfs); other fsspec
protocols are wrapped with `pyarrow.fs.FSSpecHandler`. Writes are atomic where the filesystem allows:
the bytes go to a temporary name in the same folder and are moved into place when complete, so a
reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.ipc  # noqa: F401 - pa.ipc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from povid_cli.core.errors import PovidError
from povid_cli.core.schemas import has_images, hf_features

TMP_PREFIX = ".tmp-"


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


@dataclass(frozen=True)
class Location:
    """A filesystem plus a path inside it."""

    fs: pafs.FileSystem
    path: str
    url: str  # what the user gave, normalised (absolute for local paths)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def process_local(self) -> bool:
        """An in-memory filesystem (memory://): worker processes would not see what this one writes."""
        handler = getattr(self.fs, "handler", None)
        proto = getattr(getattr(handler, "fs", None), "protocol", None)
        return "memory" in (proto if isinstance(proto, (tuple, list)) else (proto,))

    def join(self, *parts: str) -> "Location":
        sep_join = os.path.join if self.is_local else posixpath.join
        return Location(self.fs, sep_join(self.path, *parts), sep_join(self.url, *parts))

    # -- queries -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def listdir(self) -> list[str]:
        """Names (not paths) in this folder; [] if it does not exist."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))
        return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)

    # -- bytes ---------------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_json(self):
        return json.loads(self.read_bytes().decode("utf-8"))

    def makedirs(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def _tmp_sibling(self) -> "Location":
        parent, name = (os.path if self.is_local else posixpath).split(self.path)
        tmp = (os.path if self.is_local else posixpath).join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}")
        return Location(self.fs, tmp, tmp)

    def _commit(self, tmp: "Location") -> None:
        if self.is_local:
            os.replace(tmp.path, self.path)  # atomic on POSIX
        else:
            self.fs.move(tmp.path, self.path)

    def _write_atomic(self, write) -> None:
        """write(tmp) makes a temporary sibling, synced to disk locally, then renamed over this path: a reader
        sees the old file or the new one, never part of it; a failure leaves neither the temporary nor a change."""
        self.parent().makedirs()
        tmp = self._tmp_sibling()
        try:
            write(tmp)
            if self.is_local:
                _fsync(tmp.path)
            self._commit(tmp)
        except BaseException:
            tmp.delete()
            raise

    def write_bytes_atomic(self, data: bytes) -> None:
        def write(tmp: Location) -> None:
            with self.fs.open_output_stream(tmp.path) as f:
                f.write(data)

        self._write_atomic(write)

    def write_json_atomic(self, obj) -> None:
        self.write_bytes_atomic((json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())

    def delete(self) -> None:
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.File:
            self.fs.delete_file(self.path)
        elif info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)

    def link_to(self, dest: "Location") -> None:
        """Make `dest` hold this file's bytes without rewriting them where the storage allows: a hard link on a
        local disk (a copy across devices), a server-side copy on an object store."""
        dest.parent().makedirs()
        if self.is_local and dest.is_local:
            try:
                os.link(self.path, dest.path)
                return
            except OSError:
                pass  # another device, or a filesystem without hard links
        self.fs.copy_file(self.path, dest.path)

    def parent(self) -> "Location":
        mod = os.path if self.is_local else posixpath
        return Location(self.fs, mod.dirname(self.path), mod.dirname(self.url))

    # -- parquet -------------------------------------------------------------------------------
    def read_parquet(self, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path, filesystem=self.fs, columns=columns)

    def write_ipc_atomic(self, table: pa.Table) -> None:
        """An Arrow IPC file (uncompressed: a memcpy to write, a memory map to read back), for intermediate
        data that is recomputed if lost, so not fsynced."""
        self.parent().makedirs()
        tmp = self._tmp_sibling()
        try:
            with self.fs.open_output_stream(tmp.path) as f, pa.ipc.new_file(f, table.schema) as w:
                w.write_table(table)
            self._commit(tmp)
        except BaseException:
            tmp.delete()
            raise

    def read_ipc(self) -> pa.Table:
        with self.fs.open_input_file(self.path) as f:
            return pa.ipc.open_file(f).read_all()

    def parquet_schema(self) -> pa.Schema:
        with self.fs.open_input_file(self.path) as f:
            return pq.ParquetFile(f).schema_arrow

    def parquet_num_rows(self) -> int:
        with self.fs.open_input_file(self.path) as f:
            return pq.ParquetFile(f).metadata.num_rows

    def read_parquet_rows(self, start: int = 0, stop: int | None = None, columns: list[str] | None = None) -> pa.Table:
        """Rows [start, stop): only the row groups that overlap the range are read and decoded."""
        with self.fs.open_input_file(self.path) as f:
            pf = pq.ParquetFile(f)
            md = pf.metadata
            stop = md.num_rows if stop is None else min(stop, md.num_rows)
            if start == 0 and stop == md.num_rows:
                return pf.read(columns=columns)
            groups, first, at = [], None, 0
            for g in range(md.num_row_groups):
                n = md.row_group(g).num_rows
                if at + n > start and at < stop:
                    groups.append(g)
                    first = at if first is None else first
                at += n
            if not groups:
                return pf.schema_arrow.empty_table().select(columns) if columns else pf.schema_arrow.empty_table()
            return pf.read_row_groups(groups, columns=columns).slice(start - first, stop - start)

    def read_parquet_take(self, indices: list[int], columns: list[str] | None = None) -> pa.Table:
        """The rows at `indices` (in that order), reading only the row groups that hold them."""
        with self.fs.open_input_file(self.path) as f:
            pf = pq.ParquetFile(f)
            md = pf.metadata
            starts, at = [], 0
            for g in range(md.num_row_groups):
                starts.append(at)
                at += md.row_group(g).num_rows
            import bisect

            groups = sorted({bisect.bisect_right(starts, i) - 1 for i in indices})
            if not groups:
                return pf.schema_arrow.empty_table().select(columns) if columns else pf.schema_arrow.empty_table()
            table = pf.read_row_groups(groups, columns=columns)
            offset = {g: sum(md.row_group(h).num_rows for h in groups[: n]) for n, g in enumerate(groups)}
            local = [offset[bisect.bisect_right(starts, i) - 1] + i - starts[bisect.bisect_right(starts, i) - 1]
                     for i in indices]
            return table.take(local)

    def parquet_metadata(self) -> dict[str, str]:
        with self.fs.open_input_file(self.path) as f:
            md = pq.ParquetFile(f).schema_arrow.metadata or {}
        return {k.decode(): v.decode() for k, v in md.items()}

    def write_parquet_atomic(self, table: pa.Table, metadata: dict[str, str] | None = None) -> None:
        """A Parquet file written under a temporary name and moved into place. A table with image columns
        gets their `datasets` features (`huggingface` metadata) unless the caller gives its own."""
        metadata = dict(metadata or {})
        if "huggingface" not in metadata and b"huggingface" not in (table.schema.metadata or {}) \
                and any(has_images(f.type) for f in table.schema):
            metadata["huggingface"] = json.dumps(hf_features(table.schema))
        if metadata:
            merged = dict(table.schema.metadata or {})
            merged.update({k.encode(): v.encode() for k, v in metadata.items()})
            table = table.replace_schema_metadata(merged)
        # Row groups of ~64 rows keep image-heavy shards streamable by datasets / pyarrow readers.
        # Dictionary-encoding image bytes never pays (every value differs) and doubles write time.
        dict_cols = [f.name for f in table.schema if not _holds_binary(f.type)]
        self._write_atomic(lambda tmp: pq.write_table(table, tmp.path, filesystem=self.fs, row_group_size=64,
                                                      compression=_codecs(table.schema), use_dictionary=dict_cols))


def _codecs(schema: pa.Schema) -> dict[str, str]:
    """zstd for every leaf column but binary ones: image bytes are JPEG/PNG already, and noise does not
    compress, so zstd there costs time (on write and on every read) for nothing."""
    out: dict[str, str] = {}

    def walk(path: str, t: pa.DataType) -> None:
        if pa.types.is_struct(t):
            for i in range(t.num_fields):
                walk(f"{path}.{t.field(i).name}", t.field(i).type)
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            walk(f"{path}.list.element", t.value_type)
        else:
            out[path] = "none" if (pa.types.is_binary(t) or pa.types.is_large_binary(t)) else "zstd"

    for f in schema:
        walk(f.name, f.type)
    return out


def _holds_binary(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    if pa.types.is_struct(t):
        return any(_holds_binary(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _holds_binary(t.value_type)
    return False


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Reads are memory-mapped: image columns are then read straight from the page cache, not copied.
_LOCAL = pafs.LocalFileSystem(use_mmap=True)


def resolve(path: str) -> Location:
    """Turn a user path or URL into a Location. Raises PovidError for unknown protocols."""
    path = str(path)
    if path.startswith("file://"):
        path = path[len("file://") :]
    if not is_url(path):
        p = os.path.abspath(os.path.expanduser(path))
        return Location(_LOCAL, p, p)
    try:
        fs, inner = pafs.FileSystem.from_uri(path)
        return Location(fs, inner.rstrip("/"), path.rstrip("/"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        pass
    try:
        import fsspec
    except ImportError as e:  # pragma: no cover
        raise PovidError(f"cannot open {path}: install fsspec for this protocol") from e
    protocol, _, inner = path.partition("://")
    try:
        fsspec_fs = fsspec.filesystem(protocol)
    except (ImportError, ValueError) as e:
        raise PovidError(f"cannot open {path}: {e}") from e
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs))
    inner = fsspec_fs._strip_protocol(path)
    return Location(fs, inner.rstrip("/"), path.rstrip("/"))
