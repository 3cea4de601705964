"""The one scheduling loop: every job (a stage, ingest, export) hands it tasks and a commit callback.

A task is a small picklable description ("compute shard k", "normalise these records", "convert
pairs shard k"); the executor runs `fn(task)` in a worker, where the task reads its own inputs and
writes its own outputs, and hands back a small result (counts, usage, keys). Here, in the driver,
`on_result(task, result)` records it (the manifest) and may return follow-up tasks (merging the
parts of a shard), which join the queue.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable


def run_tasks(executor, fn: Callable[[Any], Any], tasks: Iterable[Any],
              on_result: Callable[[Any, Any], Iterable[Any] | None], *,
              resources: dict | None = None, max_workers: int | None = None) -> None:
    """Run fn(task) for every task and every follow-up, at most two per executor slot in flight."""
    queue = deque(tasks)
    inflight: dict = {}
    cap = 2 * executor.slots(resources, max_workers)  # two per worker: no idle gap between tasks
    finished = False
    try:
        while queue or inflight:
            while queue and len(inflight) < cap:
                task = queue.popleft()
                inflight[executor.submit(fn, task, resources, max_workers)] = task
            for handle in executor.wait(list(inflight)):
                task = inflight.pop(handle)
                queue.extend(on_result(task, executor.result(handle)) or ())
        finished = True
    finally:
        executor.release(resources, early=not finished and bool(inflight))
