"""Running one stage over DATA (what `povid hallucinate|distort|sample|filter` do; synth runs them in turn).

    ds, run = run_single(data, HallucinateStage(HallucinateConfig()), RunOptions(workers=2))
"""

from __future__ import annotations

import dataclasses
import os

from povid_cli.core.executors import RunOptions, make_executor
from povid_cli.core.fs import is_url
from povid_cli.core.runner import StageRun, run_stage
from povid_cli.core.stage import DataView, Stage
from povid_cli.core.store import Dataset


def default_cache_dir(data: str, stage: str) -> str:
    """DATA/cache/<stage> for a local dataset; a per-user folder for one on s3:// or gs://."""
    if is_url(data):
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "povid", stage)
    return os.path.join(data, "cache", stage)


def with_response_cache(stage: Stage, data: str) -> Stage:
    """The stage again with an API response cache in DATA/cache/<stage> when it talks to an API and has none:
    re-running, resuming or deleting an output never pays for the same request twice."""
    api = getattr(stage.config, "api", None)
    if not stage.uses_api or api is None or api.cache_dir is not None:
        return stage
    api = dataclasses.replace(api, cache_dir=default_cache_dir(data, stage.name))
    return type(stage)(dataclasses.replace(stage.config, api=api))


def check_inputs(data: str, stage_cls: type, config=None) -> None:
    """The stage's own check of DATA (one clear line when it cannot run yet), before the stage is built;
    `config`: what it will run with (its check may depend on it)."""
    stage_cls.check(DataView(Dataset.open(data), config))


def run_single(data: str, stage: Stage, run: RunOptions, progress=None) -> tuple[Dataset, StageRun]:
    """Open DATA, take its lock, run the stage on the executor `run` names. Workers are stopped at once
    on an interrupt or an error (finished shards are kept)."""
    ds = Dataset.open(data)
    with ds.lock():
        ex = make_executor(run.executor, run.workers, run.ray_address)
        try:
            result = run_stage(ds, stage, ex, limit=run.limit, retry_failed=run.retry_failed, progress=progress)
        except BaseException:
            ex.terminate()
            raise
        ex.close()
    return ds, result
