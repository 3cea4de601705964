"""The dataset on disk: `DATA/manifest.json` plus Parquet shards per stage output.

```
DATA/manifest.json
DATA/<output>/part-00000.parquet        # e.g. items, hallucinated, distorted, sampled, pairs, dropped
DATA/failed/<stage>/part-00000.parquet  # rows a stage could not process, with the error
```
Every shard carries, in its Parquet key-value metadata, the `povid.key` it was computed for: a hash
of the stage's config and of the keys of its input shards. A shard whose file exists with the
expected key is done; anything else is (re)computed. Only the process that holds the dataset lock
writes the manifest.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import re
import socket
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pyarrow as pa

from povid_cli.core.version import __version__
from povid_cli.core.errors import NotADatasetError, PovidError
from povid_cli.core.fs import TMP_PREFIX, Location, resolve
from povid_cli.core.lineage import ShardUnreadable

MANIFEST = "manifest.json"
FORMAT = "povid-dataset"
# 2: item ids hash (images, prompt, chosen), given rejected answers live in `given`, items have
# `extra_images` and `boxes`. Version 1 datasets stay readable; ingest refuses to add to them.
FORMAT_VERSION = 2
SHARD_RE = re.compile(r"^part-(\d{5})\.parquet$")
KEY_FIELD = "povid.key"
LOCK = ".lock"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def digest(*parts: Any, n: int = 16) -> str:
    """Stable short hash of JSON-serialisable parts."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:n]


def shard_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


class Dataset:
    """A povid dataset folder (local or remote)."""

    def __init__(self, root: Location, manifest: dict):
        self.root = root
        self.manifest = manifest
        self._lineage: dict = {}  # output -> Lineage, recomputed after any write or manifest change
        self._seen = self._manifest_stamp()  # the manifest file as last read or written by this object

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str) -> "Dataset":
        root = resolve(path)
        m = root.join(MANIFEST)
        if not root.exists():
            raise NotADatasetError(f"{root.url} does not exist")
        if not m.exists():
            raise NotADatasetError(f"{root.url} is not a povid dataset (no {MANIFEST}); create one with `povid ingest`")
        try:
            manifest = m.read_json()
        except (ValueError, UnicodeDecodeError) as e:
            raise NotADatasetError(f"{m.url} is not valid JSON: {e}") from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise NotADatasetError(f"{root.url} is not a povid dataset ({MANIFEST} has another format)")
        return cls(root, manifest)

    @classmethod
    def at(cls, path: str) -> "Dataset":
        """DATA for a worker: its shards, without reading (or ever writing) the manifest."""
        return cls(resolve(path), {})

    @classmethod
    def open_or_create(cls, path: str) -> "Dataset":
        """Open DATA, or create it if it is missing or an empty folder. Anything else is refused."""
        root = resolve(path)
        if root.join(MANIFEST).exists():
            return cls.open(path)
        if root.exists():
            if not root.is_dir():
                raise NotADatasetError(f"{root.url} exists and is not a folder; refusing to overwrite it")
            stray = [n for n in root.listdir() if n != LOCK]
            if stray:
                raise NotADatasetError(
                    f"{root.url} is not empty and is not a povid dataset ({', '.join(stray[:3])}"
                    f"{', ...' if len(stray) > 3 else ''}); refusing to write into it"
                )
        root.makedirs()
        ds = cls(root, {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "povid_version": __version__,
            "created": now_iso(),
            "updated": now_iso(),
            "stages": {},
        })
        ds.save_manifest()
        return ds

    # -- manifest --------------------------------------------------------------------------------
    def save_manifest(self) -> None:
        self._lineage.clear()
        self.manifest["updated"] = now_iso()
        self.manifest["povid_version"] = __version__
        self.root.join(MANIFEST).write_json_atomic(self.manifest)
        self._seen = self._manifest_stamp()

    def _manifest_stamp(self) -> tuple | None:
        if not self.root.is_local:
            return None
        try:
            st = os.stat(os.path.join(self.root.path, MANIFEST))
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def refresh(self) -> None:
        """Read the manifest again if another process changed it since this object last read or wrote it
        (a reader opened before a command ran sees what the command committed). Never while holding the
        lock: then nobody else writes it."""
        stamp = self._manifest_stamp()
        if stamp is not None and stamp != self._seen:
            self._reload_manifest()

    def stage_record(self, stage: str) -> dict:
        return self.manifest.setdefault("stages", {}).setdefault(stage, {})

    # -- shards ----------------------------------------------------------------------------------
    def output(self, name: str) -> Location:
        return self.root.join(*name.split("/"))

    def shard(self, output: str, k: int) -> Location:
        return self.output(output).join(shard_name(k))

    def failed_shard(self, stage: str, k: int) -> Location:
        return self.shard(f"failed/{stage}", k)

    def shard_ids(self, output: str) -> list[int]:
        ks = []
        for name in self.output(output).listdir():
            m = SHARD_RE.match(name)
            if m:
                ks.append(int(m.group(1)))
        return sorted(ks)

    def has(self, output: str) -> bool:
        return bool(self.shard_ids(output))

    def shard_key(self, output: str, k: int) -> str | None:
        """The key in the shard's footer; None when it is missing or cannot be read (then it is recomputed)."""
        try:
            return self.footer_key(output, k)
        except ShardUnreadable:
            return None

    def footer_key(self, output: str, k: int) -> str | None:
        """The key in the shard's footer, None when there is no such file; ShardUnreadable (one line, with the
        way to rebuild it) when the file is there but cannot be read."""
        loc = self.shard(output, k)
        try:
            return loc.parquet_metadata().get(KEY_FIELD)
        except FileNotFoundError:
            return None
        except (OSError, pa.ArrowInvalid) as e:
            if not loc.exists():
                return None
            from povid_cli.core.lineage import repair_hint

            raise ShardUnreadable(f"{loc.url} cannot be read ({str(e).splitlines()[0][:120]}); "
                                  f"{repair_hint(self.manifest, output)}") from None

    # -- what is committed (core/lineage.py) ---------------------------------------------------------
    def lineage(self, output: str):
        from povid_cli.core.lineage import compute

        self.refresh()
        return compute(self, output, self._lineage)

    def committed_shards(self, output: str) -> list[int]:
        """Shards of `output` that the manifest committed and whose inputs still chain (see lineage.py). An
        unreadable one raises ShardUnreadable, naming it and the repair."""
        lin = self.lineage(output)
        if lin.unreadable:
            k, why = min(lin.unreadable.items())
            raise ShardUnreadable(why)
        return sorted(lin.committed)

    def read_shard(self, output: str, k: int, columns: list[str] | None = None) -> pa.Table:
        return self.shard(output, k).read_parquet(columns=columns)

    def num_rows(self, output: str, k: int) -> int:
        """Rows of a shard, from its footer (nothing else is read)."""
        return self.shard(output, k).parquet_num_rows()

    def read_rows(self, output: str, k: int, start: int = 0, stop: int | None = None,
                  columns: list[str] | None = None) -> pa.Table:
        """Rows [start, stop) of a shard, reading only the row groups that hold them."""
        return self.shard(output, k).read_parquet_rows(start, stop, columns)

    def write_shard(self, output: str, k: int, table: pa.Table, key: str, extra: dict[str, str] | None = None) -> None:
        self._lineage.clear()
        md = {KEY_FIELD: key, "povid.version": __version__}
        md.update(extra or {})
        self.shard(output, k).write_parquet_atomic(table, md)

    def commit_shard(self, stage: str, output: str, k: int, table: pa.Table, key: str,
                     inputs: dict[str, str] | None = None) -> None:
        """Write shard k of `output` and commit it under `stage`'s record, in one call: what a stage run does
        in two places (a worker writes, the driver commits), for importers, notebooks and tests."""
        self.write_shard(output, k, table, key)
        rec = self.stage_record(stage)
        if output not in rec.setdefault("writes", []) and output != "items":
            rec["writes"].append(output)
        rec.setdefault("shards", {})[f"{k:05d}"] = {"key": key, "inputs": inputs or {}, "rows": {output: table.num_rows}}
        self.save_manifest()

    def read_all(self, output: str, columns: list[str] | None = None) -> pa.Table | None:
        """All committed shards of an output concatenated (failed/* outputs: every shard), or None if none."""
        ks = self.shard_ids(output) if output.startswith("failed/") else self.committed_shards(output)
        tables = [self.read_shard(output, k, columns) for k in ks]
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="default")

    def clean_tmp(self) -> None:
        """Remove temporary files left by a killed writer (they are never read)."""
        if not self.root.is_local:
            return
        for dirpath, _, files in os.walk(self.root.path):
            for f in files:
                if f.startswith(TMP_PREFIX):
                    try:
                        os.remove(os.path.join(dirpath, f))
                    except OSError:
                        pass

    # -- locking ---------------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Keep a second writer off this dataset; a lock left by a dead process is taken over.

        Local folders use flock(2) on DATA/.lock: the kernel drops the lock when its holder dies (even
        by SIGKILL), so a stale lock can never block a run and two runs can never both take over a
        stale one. The file records who holds it, for the message the second run prints. The manifest
        is re-read once the lock is held, so a run never writes back what it read before another
        run finished.
        """
        if not self.root.is_local:
            yield  # object stores have no atomic create; one writer per dataset is the user's job
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            with self._lock_excl():
                self._reload_manifest()
                yield
            return
        path = os.path.join(self.root.path, LOCK)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}
        while True:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                holder = _read_lock(path) or {}
                raise PovidError(
                    f"{self.root.url} is in use by another povid run (pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} since {holder.get('since', '?')}); wait for it to finish"
                ) from None
            # The holder before us may have removed the file between our open and our flock: then we
            # locked an orphaned inode, and must lock the file that is there now.
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode())
        try:
            self._reload_manifest()
            yield
        finally:
            try:
                os.remove(path)  # while still holding it: a waiter then sees a different inode
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)  # explicit: forked workers share the open file
            os.close(fd)

    @contextmanager
    def lock_unless_read_only(self) -> Iterator[bool]:
        """For commands that only read DATA (export writes elsewhere): the lock when DATA is writable
        (yields True), nothing when it is read-only storage (yields False: do not write the manifest)."""
        if self.root.is_local:
            try:
                fd = os.open(os.path.join(self.root.path, LOCK), os.O_CREAT | os.O_RDWR, 0o644)
                os.close(fd)
            except OSError as e:
                if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    yield False
                    return
                raise
        with self.lock():
            yield True

    def _reload_manifest(self) -> None:
        """Read the manifest file into self.manifest (in place). Nested records are new objects afterwards:
        callers take references to them only after this (the lock does it when taken)."""
        m = self.root.join(MANIFEST)
        stamp = self._manifest_stamp()
        if m.exists():
            try:
                fresh = m.read_json()
            except (ValueError, UnicodeDecodeError):
                return
            if isinstance(fresh, dict) and fresh.get("format") == FORMAT:
                self.manifest.clear()
                self.manifest.update(fresh)
                self._seen = stamp
                self._lineage.clear()

    @contextmanager
    def _lock_excl(self) -> Iterator[None]:  # pragma: no cover - platforms without fcntl
        path = os.path.join(self.root.path, LOCK)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(path)
                if holder and _alive(holder):
                    raise PovidError(
                        f"{self.root.url} is in use by another povid run (pid {holder.get('pid')} on "
                        f"{holder.get('host')} since {holder.get('since')}); wait for it to finish"
                    ) from None
                try:  # stale: its process is gone
                    os.remove(path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
        else:
            raise PovidError(f"could not take the lock on {self.root.url}")
        try:
            yield
        finally:
            try:
                if (_read_lock(path) or {}).get("pid") == me["pid"]:
                    os.remove(path)
            except OSError:
                pass


def _read_lock(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        # A lock being written right now reads as empty; give its writer a moment.
        time.sleep(0.05)
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell for another machine: assume it is running
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
