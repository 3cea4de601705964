"""What a stage is: a pure function over a batch of rows, plus a frozen config and a backend.

A stage subclass declares what it reads and writes and implements `process(batch) -> Result`.
It never opens files: the runner (runner.py) reads the input shards, hands the stage batches,
and writes what comes back. Example:

    @dataclass(frozen=True)
    class UpperConfig:
        column: str = "chosen"

    class Upper(Stage):
        name = "upper"
        reads = ("items",)
        writes = ("uppered",)
        schemas = {"uppered": pa.schema([("id", pa.string()), ("text", pa.string())])}
        Config = UpperConfig

        def process(self, batch):
            return Result.of(self.map_rows(batch.rows, lambda r: [{"id": r["id"], "text": r[self.config.column].upper()}]))
"""

from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import pyarrow as pa

from povid_cli.core.errors import PovidError, RowError, TransientError
from povid_cli.core.options import hashed
from povid_cli.core.templates import prompt_hash
from povid_cli.core.store import digest

FAILED_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("stage", pa.string()),
    ("error", pa.string()),
    ("kind", pa.string()),
    ("retryable", pa.bool_()),
    ("detail", pa.string()),  # JSON: whatever helps find the row again (source, source_id, variant...)
])


def failure(row_id: str | None, error: str, *, kind: str = "invalid", retryable: bool = False,
            detail: str | None = None) -> dict:
    return {"id": row_id, "error": error, "kind": kind, "retryable": retryable, "detail": detail}


@dataclass
class Batch:
    """Rows of the stage's primary input (`rows`) and the matching rows of its other inputs.

    `inputs[name]` holds the rows of input `name` whose item id is in this batch, in shard order.
    """

    rows: list[dict]
    inputs: dict[str, list[dict]] = field(default_factory=dict)
    shard: int = 0

    def by_item(self, name: str) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for r in self.inputs.get(name, []):
            out.setdefault(item_id_of(r), []).append(r)
        return out


def pair_id(item_id: str, kind: str, variant: str | None, rejected: str) -> str:
    """A pair's stable id (filter's candidates, ingest's given pairs): the same pair always has the same id."""
    return digest(item_id, kind, variant, rejected)


def item_id_of(row: dict) -> str:
    """The item a row belongs to: `item_id` when the row has one (pairs), else its `id`."""
    return row.get("item_id") or row["id"]


@dataclass
class Result:
    """What a stage returns for one batch: rows per output, failed rows, and usage (tokens, requests)."""

    outputs: dict[str, list[dict]] = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)
    usage: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, pair: tuple[list[dict], list[dict]], output: str | None = None, usage: dict | None = None) -> "Result":
        rows, failed = pair
        return cls({output or "": rows}, failed, usage or {})

    def merge(self, other: "Result") -> None:
        for k, v in other.outputs.items():
            self.outputs.setdefault(k, []).extend(v)
        self.failed.extend(other.failed)
        for k, v in other.usage.items():
            self.usage[k] = self.usage.get(k, 0) + v


class DataView:
    """What a stage may ask about DATA before it runs (the runner reads; the stage never opens a file).
    `config` is the config the stage will run with, when the caller has it (`sample --clean` needs no
    distorted images; a plain `sample` does)."""

    def __init__(self, ds, config: Any = None):
        self._ds = ds
        self.url = ds.root.url
        self.config = config

    def has(self, output: str) -> bool:
        return self._ds.has(output)

    def all_null(self, output: str, column: str) -> bool:
        """True when no row of `output` has a value in `column` (or there is no such output or column)."""
        for k in self._ds.committed_shards(output):
            if column not in self._ds.shard(output, k).parquet_schema().names:
                continue
            if self._ds.read_shard(output, k, columns=[column]).column(column).null_count < self._ds.num_rows(output, k):
                return False
        return True

    def has_value(self, output: str, column: str, values: tuple) -> bool:
        """True when some committed row of `output` has one of `values` in `column`."""
        for k in self._ds.committed_shards(output):
            if column not in self._ds.shard(output, k).parquet_schema().names:
                continue
            if set(self._ds.read_shard(output, k, columns=[column]).column(column).to_pylist()) & set(values):
                return True
        return False


class Stage:
    """Base class of every stage. Subclasses set the class attributes and implement `process`."""

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ("items",)  # reads[0] drives the shards; others join by item id
    optional_reads: ClassVar[tuple[str, ...]] = ()  # used when present
    writes: ClassVar[tuple[str, ...]]  # writes[0] is the main output
    schemas: ClassVar[dict[str, pa.Schema]]
    Config: ClassVar[type]
    prompts: ClassVar[tuple[str, ...]] = ()  # prompt templates whose hash is part of the config hash
    uses_api: bool = False  # talks to an API: the job gives it a response cache (DATA/cache/<stage>)
    version: ClassVar[str] = "1"  # bump when the stage's logic changes its output: done shards re-run
    batch_size: ClassVar[int | None] = 32  # None: the whole shard at once (engines that schedule themselves)
    max_workers: ClassVar[int | None] = None  # 1 for stages that hold one model per process
    resources: ClassVar[dict[str, float]] = {}  # e.g. {"num_gpus": 1} for the ray executor
    sequential: ClassVar[bool] = False  # shards in order in one process, with `observe` for done shards
    observes: ClassVar[tuple[str, ...] | None] = None  # outputs `observe` reads of a done shard (None: all)

    def __init__(self, config: Any):
        self.config = config
        self._ready = False

    # -- identity --------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return dataclasses.asdict(self.config)

    def config_hash(self) -> str:
        return digest(self.name, self.version, hashed(self.config), {p: prompt_hash(p) for p in self.prompts})

    # -- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def check(cls, data: "DataView") -> None:
        """Refuse to run, with one clear line, when DATA cannot feed this stage (called before the stage is
        built by the commands, and before planning by the runner)."""

    # -- lifecycle (per worker process) ----------------------------------------------------------
    def ensure_ready(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    def setup(self) -> None:
        """Load models or open clients; called once per worker process before the first batch."""

    def process(self, batch: Batch) -> Result:  # pragma: no cover - abstract
        raise NotImplementedError

    def observe(self, outputs: dict[str, list[dict]]) -> None:
        """Sequential stages: see the outputs of a shard that is already done (to rebuild state)."""

    def skips(self, output: str) -> frozenset[str]:
        """Columns of an input output this stage never looks at (image bytes, say): the worker does not read
        them, so memory and I/O follow what the stage uses."""
        return frozenset()

    def close(self) -> None:
        """Release what setup() took."""

    # -- helpers for subclasses --------------------------------------------------------------------
    def map_rows(self, rows: Iterable[dict], fn: Callable[[dict], list[dict]]) -> tuple[list[dict], list[dict]]:
        """Apply fn to each row; a row whose fn raises goes to the failed list instead of the output."""
        out: list[dict] = []
        failed: list[dict] = []
        for row in rows:
            try:
                out.extend(fn(row))
            except RowError as e:
                failed.append(failure(row.get("id"), str(e), kind=e.kind, retryable=e.retryable))
            except TransientError as e:
                failed.append(failure(row.get("id"), str(e), kind="transient", retryable=True))
            except PovidError:
                raise  # configuration problems stop the run
            except Exception as e:  # noqa: BLE001 - a bad row must not take the shard down
                failed.append(failure(row.get("id"), f"{type(e).__name__}: {e}", kind="error",
                                      detail=traceback.format_exc(limit=3)))
        return out, failed
