"""Where batches run: in this process, in a pool of local processes, or as Ray tasks.

An executor maps a top-level function over (tag, args) tasks and yields (tag, result) as they finish.
It only computes: reading and writing files stays with the runner in the driver process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator

from .errors import UsageError, require

Task = tuple[Any, tuple]


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


class InlineExecutor:
    """Runs tasks one after another in this process (workers=1, or stages that hold a model)."""

    name = "inline"
    workers = 1

    def imap_unordered(self, fn: Callable, tasks: Iterable[Task], resources: dict | None = None) -> Iterator[tuple[Any, Any]]:
        for tag, args in tasks:
            yield tag, fn(*args)

    def close(self) -> None:
        pass


class LocalExecutor:
    """A pool of worker processes on this machine; at most 2 x workers tasks in flight (bounded memory)."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # fork is cheap and safe while nothing heavy (torch, CUDA) is loaded; otherwise spawn.
            heavy = any(m in sys.modules for m in ("torch", "vllm", "ray"))
            ctx = mp.get_context("spawn" if heavy or sys.platform != "linux" else "fork")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        return self._pool

    def imap_unordered(self, fn: Callable, tasks: Iterable[Task], resources: dict | None = None) -> Iterator[tuple[Any, Any]]:
        pool = self._ensure_pool()
        pending: dict = {}
        it = iter(tasks)
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * self.workers:
                try:
                    tag, args = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending[pool.submit(fn, *args)] = tag
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                tag = pending.pop(fut)
                yield tag, fut.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor:
    """The same tasks as Ray remote functions (`ray.init(address=...)`; a local Ray when no address).

    Stages that ask for GPUs (`resources={"num_gpus": 1}`) get them from Ray's scheduler.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None):
        self.ray = require("ray", "ray")
        self.workers = workers or default_workers()
        if not self.ray.is_initialized():
            kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = self.workers
                kwargs["include_dashboard"] = False
            # Workers import povid from the same checkout/env as the driver.
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
            self.ray.init(**kwargs)
        self._remote_cache: dict = {}

    def imap_unordered(self, fn: Callable, tasks: Iterable[Task], resources: dict | None = None) -> Iterator[tuple[Any, Any]]:
        ray = self.ray
        opts = {"num_cpus": 1}
        opts.update(resources or {})
        key = (fn, tuple(sorted(opts.items())))
        if key not in self._remote_cache:
            self._remote_cache[key] = ray.remote(**opts)(fn)
        remote = self._remote_cache[key]
        in_flight: dict = {}
        it = iter(tasks)
        exhausted = False
        limit = 2 * self.workers
        while True:
            while not exhausted and len(in_flight) < limit:
                try:
                    tag, args = next(it)
                except StopIteration:
                    exhausted = True
                    break
                in_flight[remote.remote(*args)] = tag
            if not in_flight:
                return
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                tag = in_flight.pop(ref)
                yield tag, ray.get(ref)

    def close(self) -> None:
        pass  # leave the cluster (or the local ray) to its owner; ray.shutdown() at exit


def make_executor(name: str = "local", workers: int | None = None, address: str | None = None):
    workers = workers or default_workers()
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if name == "local":
        return InlineExecutor() if workers == 1 else LocalExecutor(workers)
    if name == "inline":
        return InlineExecutor()
    if name == "ray":
        return RayExecutor(address, workers)
    raise UsageError(f"unknown executor {name!r}; choose local or ray")


__all__ = ["InlineExecutor", "LocalExecutor", "RayExecutor", "make_executor", "default_workers"]
