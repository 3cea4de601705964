"""Where tasks run: in this process, in a pool of local processes, or on Ray actors.

An executor only schedules: `submit(fn, arg)` starts `fn(arg)` somewhere and returns a handle,
`wait(handles)` returns those that finished, `result(handle)` gives the value (or raises the task's
own error). The tasks themselves read their inputs and write their outputs (see core/tasks.py), so
nothing but small task descriptions and counts crosses between processes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

from povid_cli.core.errors import PovidError, UsageError, require
from povid_cli.core.options import Options, opt


@dataclass(frozen=True)
class RunOptions(Options):
    """Where and how a job runs: every stage command's run flags, and the [run] section of povid.toml."""

    executor: str = opt("local", "Where tasks run: local (processes on this machine) or ray.", choices=("local", "ray"))
    workers: int | None = opt(None, "Parallel workers [default: local cores, or the Ray cluster's CPUs].", short="-w",
                              min=1)
    ray_address: str | None = opt(None, "Ray cluster address (ray://host:10001 or auto) [default: a local Ray].")
    limit: int | None = opt(None, "Process only the first N items (to try things out).", min=1)
    retry_failed: bool = opt(False, "Run again the rows that failed for any reason, not only transient ones.")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


class InlineExecutor:
    """Runs each task in this process when it is submitted (workers=1, or stages that hold a model)."""

    name = "inline"
    workers = 1
    remote = False

    def slots(self, resources: dict | None = None, max_workers: int | None = None) -> int:
        return 1

    def submit(self, fn: Callable, arg: Any, resources: dict | None = None, max_workers: int | None = None) -> Future:
        fut: Future = Future()
        fut.set_result(fn(arg))  # errors propagate at once: there is nothing else in flight to stop
        return fut

    def wait(self, handles: list) -> list:
        return list(handles)

    def result(self, handle: Future) -> Any:
        return handle.result()

    def release(self, resources: dict | None = None, early: bool = False) -> None:
        pass

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
    """A pool of worker processes on this machine."""

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

    def slots(self, resources: dict | None = None, max_workers: int | None = None) -> int:
        return max(1, min(self.workers, max_workers or self.workers))

    def submit(self, fn: Callable, arg: Any, resources: dict | None = None, max_workers: int | None = None) -> Future:
        return self._ensure_pool().submit(fn, arg)

    def wait(self, handles: list) -> list:
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, handle: Future) -> Any:
        return handle.result()

    def release(self, resources: dict | None = None, early: bool = False) -> None:
        pass

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def terminate(self) -> None:
        """Stop now (Ctrl-C, SIGTERM): kill the workers instead of waiting for their tasks."""
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
    """A Ray actor: one long-lived process that runs tasks, so a stage's setup() (a model, a client)
    happens once per actor, like once per process in the local pool."""

    def run(self, fn: Callable, arg: Any) -> Any:
        return fn(arg)


def check_reachable(address: str, timeout: float = 5.0) -> None:
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

    Tasks run on pools of actors, one pool per resource shape, sized to what the cluster can hold: one
    per CPU for CPU tasks (capped by --workers and the stage's `max_workers`), one per GPU share for
    tasks that ask for GPUs (`{"num_gpus": 1}`: one vLLM engine per GPU). CPU actors are reused by the
    next stages (no start-up cost per stage); GPU actors end with their stage (`release`), so the GPU
    memory is given back before the next one starts. Tasks read and write DATA themselves, so DATA
    must be on storage every node sees (a shared folder or an s3:// / gs:// URL).
    """

    name = "ray"
    remote = True  # stages with max_workers=1 run here as one actor per GPU/CPU share, not inline

    def __init__(self, address: str | None = None, workers: int | None = None):
        self.ray = require("ray", "ray")
        self._owns = False
        if not self.ray.is_initialized():
            kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False}
            if address:
                check_reachable(address)  # ray.init would retry an unreachable address for minutes
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
        self._load: dict[Any, int] = {}  # tasks in flight per actor
        self._where: dict[Any, Any] = {}  # ObjectRef -> actor

    @staticmethod
    def _opts(resources: dict | None) -> dict:
        opts: dict[str, Any] = {"num_cpus": 1}
        opts.update(resources or {})
        return opts

    def slots(self, resources: dict | None = None, max_workers: int | None = None) -> int:
        """Actors for one stage: one per GPU share for GPU stages, else --workers capped by max_workers."""
        opts = self._opts(resources)
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

    def _actors(self, resources: dict | None, max_workers: int | None) -> list:
        opts = self._opts(resources)
        size = self.slots(resources, max_workers)
        pool = self._pools.setdefault(tuple(sorted(opts.items())), [])
        if len(pool) < size:
            actor_cls = self.ray.remote(**opts)(_RayWorker)
            pool += [actor_cls.remote() for _ in range(size - len(pool))]
        return pool[:size]

    def submit(self, fn: Callable, arg: Any, resources: dict | None = None, max_workers: int | None = None):
        actors = self._actors(resources, max_workers)
        actor = min(actors, key=lambda a: self._load.get(a, 0))
        self._load[actor] = self._load.get(actor, 0) + 1
        ref = actor.run.remote(fn, arg)
        self._where[ref] = actor
        return ref

    def wait(self, handles: list) -> list:
        ready, _ = self.ray.wait(list(handles), num_returns=1)
        return ready

    def result(self, handle) -> Any:
        actor = self._where.pop(handle, None)
        if actor is not None:
            self._load[actor] -= 1
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)  # the task's own error (PovidError...), not Ray's wrapper
            raise (cause if isinstance(cause, BaseException) else e.as_instanceof_cause()) from None

    def release(self, resources: dict | None = None, early: bool = False) -> None:
        """After a stage: on an early stop every actor may be busy with stale work; GPU actors always go."""
        if early:
            self._kill_actors()
        elif self._opts(resources).get("num_gpus"):
            self._kill_actors(tuple(sorted(self._opts(resources).items())))

    def _kill_actors(self, key: tuple | None = None) -> None:
        for k in [key] if key is not None else list(self._pools):
            for a in self._pools.pop(k, []):
                self._load.pop(a, None)
                try:
                    self.ray.kill(a)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        if key is None:
            self._where.clear()

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


__all__ = ["RunOptions", "InlineExecutor", "LocalExecutor", "RayExecutor", "make_executor", "default_workers", "check_reachable"]
