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

from povid_cli.core.errors import PovidError, UsageError, require

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
    remote = False

    def imap_unordered(self, fn: Callable, tasks: Iterable[Task], resources: dict | None = None) -> Iterator[tuple[Any, Any]]:
        for tag, args in tasks:
            yield tag, fn(*args)

    def close(self) -> None:
        pass

    def terminate(self) -> None:
        pass


def _worker_init(parent_pid: int) -> None:
    """In each pool worker: die with the parent, and leave Ctrl-C and SIGTERM to it.

    Ctrl-C reaches the whole process group; only the parent should react (it stops the pool). A
    forked worker also inherits the CLI's SIGTERM handler, which would turn `terminate()` into a
    traceback; the default action just ends it. PR_SET_PDEATHSIG kills the worker when the parent
    dies, even by SIGKILL, so no orphan keeps computing (or holding the dataset lock) after a crash.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover - exotic libc
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class LocalExecutor:
    """A pool of worker processes on this machine; at most 2 x workers tasks in flight (bounded memory)."""

    name = "local"
    remote = False

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # fork is cheap and safe while nothing heavy (torch, CUDA) is loaded; otherwise spawn.
            heavy = any(m in sys.modules for m in ("torch", "vllm", "ray"))
            ctx = mp.get_context("spawn" if heavy or sys.platform != "linux" else "fork")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx,
                                             initializer=_worker_init, initargs=(os.getpid(),))
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

    def terminate(self) -> None:
        """Stop now (Ctrl-C, SIGTERM): kill the workers instead of waiting for their batches."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for p in procs:
            if p.is_alive():
                p.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.join(timeout=5)


class _RayWorker:
    """A Ray actor: one long-lived process that runs batches, so a stage's setup() (a model, a client)
    happens once per actor, like once per process in the local pool."""

    def run(self, fn: Callable, args: tuple) -> Any:
        return fn(*args)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast with one line when a host:port (or ray://host:port) Ray address does not answer."""
    import socket

    hostport = address.split("://", 1)[-1]
    if address in ("auto", "local") or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise PovidError(f"cannot reach a Ray cluster at {address} ({e}); start one with `ray start --head` "
                         "or leave out --ray-address for a local Ray") from None


class RayExecutor:
    """The same tasks on a Ray cluster (`ray.init(address=...)`; a local Ray when no address).

    Each stage gets a pool of actors sized to what the cluster can hold: one per CPU for CPU stages
    (capped by --workers and by the stage's `max_workers`), one per GPU share for stages whose
    `resources` ask for GPUs (`{"num_gpus": 1}`: one vLLM engine per GPU). CPU actors are reused by
    the next stages (no start-up cost per stage); GPU actors end with their stage, so the GPU memory
    is given back before the next one starts. Reading and writing shards stays with the driver, so
    results are identical to the local executor.
    """

    name = "ray"
    remote = True  # stages with max_workers=1 run here as one actor per GPU/CPU share, not inline

    def __init__(self, address: str | None = None, workers: int | None = None):
        self.ray = require("ray", "ray")
        self._owns = False
        if not self.ray.is_initialized():
            kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False}
            if address:
                _check_reachable(address)  # ray.init would retry an unreachable address for minutes
                kwargs["address"] = address  # the cluster's nodes need povid installed (see README)
            else:
                kwargs["num_cpus"] = workers or default_workers()
                kwargs["include_dashboard"] = False
                # Local workers import povid (and test-defined stages) from the driver's sys.path.
                kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
            try:
                self.ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise PovidError(f"cannot start or reach Ray{' at ' + address if address else ''}: {e}") from e
            self._owns = True
        self.workers = workers or max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        self._pools: dict[tuple, list] = {}  # actors per resource shape, reused by later stages

    def _pool_size(self, opts: dict, max_workers: int | None) -> int:
        """Actors for one stage: one per GPU share for GPU stages, else --workers capped by max_workers."""
        total = self.ray.cluster_resources()
        for res, key in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
            need, have = float(opts.get(res) or 0), float(total.get(key, 0))
            if need > have:
                raise UsageError(f"this stage asks Ray for {need:g} {key} per worker but the cluster has "
                                 f"{have:g}; add {key} nodes or use --executor local")
        if opts.get("num_gpus"):
            # max_workers=1 means one model per process: on Ray, one engine per GPU share.
            return max(1, min(self.workers, int(float(total["GPU"]) // float(opts["num_gpus"]))))
        return max(1, min(self.workers, max_workers or self.workers))

    def imap_unordered(self, fn: Callable, tasks: Iterable[Task], resources: dict | None = None,
                       max_workers: int | None = None) -> Iterator[tuple[Any, Any]]:
        ray = self.ray
        opts: dict[str, Any] = {"num_cpus": 1}
        opts.update(resources or {})
        size = self._pool_size(opts, max_workers)
        key = tuple(sorted(opts.items()))
        pool = self._pools.setdefault(key, [])
        if len(pool) < size:
            actor_cls = ray.remote(**opts)(_RayWorker)
            pool += [actor_cls.remote() for _ in range(size - len(pool))]
        actors = pool[:size]
        load = {i: 0 for i in range(size)}
        in_flight: dict = {}
        it = iter(tasks)
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < 2 * size:  # two per actor: no idle gaps
                    try:
                        tag, args = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    i = min(load, key=load.get)
                    load[i] += 1
                    in_flight[actors[i].run.remote(fn, args)] = (tag, i)
                if not in_flight:
                    return
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    tag, i = in_flight.pop(ref)
                    load[i] -= 1
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:
                        cause = getattr(e, "cause", None)  # the stage's own error (PovidError...), not Ray's wrapper
                        raise (cause if isinstance(cause, BaseException) else e.as_instanceof_cause()) from None
                    yield tag, result
        finally:
            if in_flight:  # stopped early (an error, Ctrl-C): actors may be busy with stale work
                self._kill_actors()
            elif opts.get("num_gpus"):
                self._kill_actors(key)  # give the GPU memory back before the next stage

    def _kill_actors(self, key: tuple | None = None) -> None:
        for k in [key] if key is not None else list(self._pools):
            for a in self._pools.pop(k, []):
                try:
                    self.ray.kill(a)
                except Exception:  # noqa: BLE001 - already gone
                    pass

    def close(self) -> None:
        self._kill_actors()
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()  # a Ray we started; a cluster (or a caller's ray.init) stays up
            self._owns = False

    def terminate(self) -> None:
        self.close()


def make_executor(name: str = "local", workers: int | None = None, address: str | None = None):
    if workers is not None and workers < 1:
        raise UsageError("--workers must be at least 1")
    if name == "ray":
        return RayExecutor(address, workers)  # default: the cluster's CPUs, not this machine's
    workers = workers or default_workers()
    if name == "local":
        return InlineExecutor() if workers == 1 else LocalExecutor(workers)
    if name == "inline":
        return InlineExecutor()
    raise UsageError(f"unknown executor {name!r}; choose local or ray")


__all__ = ["InlineExecutor", "LocalExecutor", "RayExecutor", "make_executor", "default_workers"]
