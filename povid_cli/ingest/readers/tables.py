"""Files as tables of rows: JSON / JSONL lists, Parquet, Arrow IPC (`datasets.save_to_disk`), local or URL.

`open_table(loc)` gives the column names and an iterator of row dicts, text only: an image column of a
Parquet or Arrow file (the `datasets` Image layout `struct<bytes, path>`, a list of those, or raw
bytes) arrives as `Cells`, references the ingest workers resolve, so no image byte is read here. For
Parquet only the `path` field of image columns is read (it gives the number of images per row);
Arrow files are memory-mapped, so their image bytes are never touched either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from povid_cli.core.schemas import IMAGE

BATCH = 1024
BASE64_COLUMNS = ("image_bytes",)  # string columns that hold base64 images (OPA-DPO's datasets)


class Cells(list):
    """The images of one table cell, as [(ImageRef, name)]: read later, by the workers."""


@dataclass
class Table:
    file: str                 # path or URL
    fmt: str                  # json | parquet | arrow
    columns: list[str]
    rows: Iterator[dict]


class TableError(ValueError):
    """The file cannot be read as a table (one line: why)."""


def _image_kind(t: pa.DataType, name: str) -> str | None:
    if t == IMAGE:
        return "image"
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and t.value_type == IMAGE:
        return "images"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if name in BASE64_COLUMNS and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        return "binary"
    return None


def _cells(array: pa.Array | pa.ChunkedArray, kind: str, file: str, fmt: str, column: str, start: int,
           root: str | None) -> list:
    """One `Cells` per row of `array` (the column, or its `path` projection)."""
    if isinstance(array, pa.ChunkedArray):
        array = pa.concat_arrays(array.chunks) if array.num_chunks != 1 else array.chunk(0)
    out: list = []
    if kind == "binary":
        for j, valid in enumerate(array.is_valid().to_pylist()):
            out.append(Cells([(("cell", file, fmt, start + j, column, 0, root), None)] if valid else []))
        return out
    if kind == "image":
        paths = array.field("path").to_pylist() if array.type.num_fields else [None] * len(array)
        for j, (valid, p) in enumerate(zip(array.is_valid().to_pylist(), paths)):
            out.append(Cells([(("cell", file, fmt, start + j, column, 0, root), p)] if valid else []))
        return out
    lengths = array.value_lengths().to_pylist()
    values = array.flatten()
    paths = values.field("path").to_pylist() if values.type.num_fields else [None] * len(values)
    at = 0
    for j, n in enumerate(lengths):
        n = n or 0
        out.append(Cells((("cell", file, fmt, start + j, column, i, root), paths[at + i]) for i in range(n)))
        at += n
    return out


def _rows(batches, kinds: dict[str, str], file: str, fmt: str, root: str | None) -> Iterator[dict]:
    at = 0
    for batch in batches:
        cells = {}
        for c, k in kinds.items():
            if c in batch.schema.names:
                cells[c] = _cells(batch.column(c), k, file, fmt, c, at, root)
            else:  # raw bytes, not read here: every row refers to its cell; the workers say when it is empty
                cells[c] = [Cells([(("cell", file, fmt, at + j, c, 0, root), None)]) for j in range(batch.num_rows)]
        text = batch.drop_columns([c for c in cells if c in batch.schema.names])
        for j, row in enumerate(text.to_pylist()):
            for c, col in cells.items():
                row[c] = col[j]
            yield row
        at += batch.num_rows


def parquet_table(loc, root: str | None) -> Table:
    try:
        f = loc.fs.open_input_file(loc.path)
        pf = pq.ParquetFile(f)
    except (OSError, pa.ArrowInvalid) as e:
        raise TableError(f"not a readable Parquet file: {e}") from None
    schema = pf.schema_arrow
    kinds = {fld.name: k for fld in schema if (k := _image_kind(fld.type, fld.name))}
    columns = []  # image columns: only their `path` (and validity, list lengths); raw bytes columns: nothing
    for fld in schema:
        k = kinds.get(fld.name)
        if k == "image":
            columns.append(f"{fld.name}.path")
        elif k == "images":
            columns.append(f"{fld.name}.list.{fld.type.value_field.name}.path")
        elif k is None:
            columns.append(fld.name)

    def batches():
        try:
            yield from pf.iter_batches(batch_size=BATCH, columns=columns)
        finally:
            f.close()

    return Table(loc.url, "parquet", list(schema.names), _rows(batches(), kinds, loc.url, "parquet", root))


def arrow_table(loc, root: str | None) -> Table:
    """An Arrow IPC file (`datasets.save_to_disk` writes the stream format), memory-mapped when local."""
    try:
        table = read_ipc(loc)
    except (OSError, pa.ArrowInvalid) as e:
        raise TableError(f"not a readable Arrow file: {e}") from None
    kinds = {fld.name: k for fld in table.schema if (k := _image_kind(fld.type, fld.name))}
    return Table(loc.url, "arrow", list(table.schema.names),
                 _rows(table.to_batches(max_chunksize=BATCH), kinds, loc.url, "arrow", root))


def read_ipc(loc) -> pa.Table:
    if loc.is_local:
        source = pa.memory_map(loc.path)
    else:
        source = pa.BufferReader(loc.read_bytes())
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source).read_all()


def json_table(loc, data) -> Table:
    """Rows of a parsed JSON document: a list of objects, or HA-DPO's object keyed by image id."""
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        rows = [{"image_id": k, **v} for k, v in data.items()]
    elif isinstance(data, list):
        rows = data
    else:
        raise TableError("not a list of records (nor an object of records keyed by image id)")
    keys: dict[str, None] = {}
    for r in rows[:200]:
        if isinstance(r, dict):
            keys.update(dict.fromkeys(r))
    return Table(loc.url, "json", list(keys), iter(rows))


def parse_json(raw: bytes, ext: str):
    """A JSON document, or JSONL lines as a list; TableError with the first problem."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TableError(f"not UTF-8 text: {e}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        first = str(e)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise TableError("not valid JSON or JSONL: empty file")
    out = []
    for i, ln in enumerate(lines, 1):
        try:
            out.append(json.loads(ln))
        except ValueError as e:
            raise TableError(f"not valid JSON or JSONL: {first if ext != '.jsonl' else f'line {i}: {e}'}") from None
    return out


__all__ = ["Cells", "Table", "TableError", "parquet_table", "arrow_table", "json_table", "parse_json", "read_ipc"]
