"""`--executor ray`: the same shard tasks on Ray give the same rows; GPU stages get GPUs.

One local Ray per module (num_cpus=2 and one logical GPU, so GPU scheduling is tested on CPU).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import pyarrow as pa
import pytest

from povid_cli.core.executors import InlineExecutor, RayExecutor
from povid_cli.core.runner import run_stage
from povid_cli.core.stage import Result, Stage
from povid_cli.core.store import Dataset
from synth_toy import ToyHallucinate, ToyHallucinateConfig, use_toy_stages

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    yield ray
    ray.shutdown()


@dataclass(frozen=True)
class WhereConfig:
    tag: str = "x"


class Where(Stage):
    """Records which process and which GPUs computed each row."""

    name = "where"
    writes = ("where",)
    schemas = {"where": pa.schema([("id", pa.string()), ("pid", pa.int64()), ("gpus", pa.list_(pa.string()))])}
    Config = WhereConfig
    batch_size = 2
    max_workers = 1  # one model per process
    resources = {"num_gpus": 1}

    def setup(self):
        self.loads = getattr(self, "loads", 0) + 1

    def process(self, batch):
        gpus = [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
        return Result({"where": [{"id": r["id"], "pid": os.getpid(), "gpus": gpus} for r in batch.rows]})


class Broken(Where):
    name = "broken"
    resources = {}

    def setup(self):
        from povid_cli.core.errors import PovidError

        raise PovidError("the model folder has no config.json")


def _items(n):
    return [{"prompt": f"q{i}", "chosen": f"answer number {i} with words"} for i in range(n)]


def test_ray_executor_gives_the_same_shards_as_inline(local_ray, make_items, tmp_path):
    a = make_items(_items(9), shard_size=3, path=tmp_path / "a")
    b = make_items(_items(9), shard_size=3, path=tmp_path / "b")
    run_stage(Dataset.open(str(a)), ToyHallucinate(ToyHallucinateConfig()), InlineExecutor())
    ex = RayExecutor()
    try:
        run = run_stage(Dataset.open(str(b)), ToyHallucinate(ToyHallucinateConfig()), ex)
    finally:
        ex.close()
    assert ray.is_initialized()  # a Ray the executor did not start is left running
    assert run.shards_run == 3 and run.usage == {"prompt_tokens": 27}
    da, db = Dataset.open(str(a)), Dataset.open(str(b))
    for k in range(3):
        assert da.read_shard("hallucinated", k).equals(db.read_shard("hallucinated", k))
        assert da.shard_key("hallucinated", k) == db.shard_key("hallucinated", k)
    assert Dataset.open(str(b)).manifest["stages"]["hallucinate"]["last_run"]["executor"] == "ray"


def test_a_gpu_stage_runs_in_an_actor_that_holds_a_gpu(local_ray, make_items, tmp_path):
    data = make_items(_items(6), shard_size=2)
    ex = RayExecutor()
    try:
        run_stage(Dataset.open(str(data)), Where(WhereConfig()), ex)
    finally:
        ex.close()
    rows = Dataset.open(str(data)).read_all("where").to_pylist()
    assert len(rows) == 6
    assert all(r["gpus"] == ["0"] for r in rows)  # Ray gave the actor the (logical) GPU
    assert {r["pid"] for r in rows} != {os.getpid()} and len({r["pid"] for r in rows}) == 1  # one engine per GPU


def test_a_stage_asking_for_more_gpus_than_the_cluster_has_is_a_clear_error(local_ray, make_items):
    from povid_cli.core.errors import UsageError

    class Greedy(Where):
        resources = {"num_gpus": 4}

    data = make_items(_items(2))
    ex = RayExecutor()
    try:
        with pytest.raises(UsageError, match="asks Ray for 4 GPU per worker but the cluster has 1"):
            run_stage(Dataset.open(str(data)), Greedy(WhereConfig()), ex)
    finally:
        ex.close()


def test_a_setup_error_in_a_ray_worker_is_the_same_one_line_error(local_ray, make_items):
    from povid_cli.core.errors import PovidError

    data = make_items(_items(2))
    ex = RayExecutor()
    try:
        with pytest.raises(PovidError) as info:
            run_stage(Dataset.open(str(data)), Broken(WhereConfig()), ex)
        assert str(info.value) == "the model folder has no config.json"  # no Ray traceback around it
    finally:
        ex.close()


def test_synth_on_ray_matches_the_local_executor(local_ray, cli, sample_dir, tmp_path, monkeypatch):
    use_toy_stages(monkeypatch)
    args = [sample_dir / "llava.json", "--limit", "8"]
    local = cli(["synth", *args, "-o", tmp_path / "local", "--workers", "2"])
    on_ray = cli(["synth", *args, "-o", tmp_path / "ray", "--executor", "ray"])
    assert local.exit_code == 0 and on_ray.exit_code == 0, on_ray.output
    for out in ("items", "hallucinated", "distorted", "pairs"):
        a = Dataset.open(str(tmp_path / "local")).read_all(out)
        b = Dataset.open(str(tmp_path / "ray")).read_all(out)
        assert a.equals(b), out
    assert Dataset.open(str(tmp_path / "ray")).manifest["synth"]["config"]["run"]["executor"] == "ray"


def test_synth_real_stages_on_ray_matches_local(local_ray, cli, sample_dir, tmp_path):
    args = [sample_dir / "llava.json", "--limit", "6", "--export", "none"]
    local = cli(["synth", *args, "-o", tmp_path / "local", "--workers", "1"])
    on_ray = cli(["synth", *args, "-o", tmp_path / "ray", "--executor", "ray"])
    assert local.exit_code == on_ray.exit_code, on_ray.output
    for out in ("hallucinated", "distorted", "pairs"):
        a = Dataset.open(str(tmp_path / "local")).read_all(out)
        b = Dataset.open(str(tmp_path / "ray")).read_all(out)
        assert a is not None and a.equals(b), out


def test_an_unreachable_ray_address_fails_fast_and_creates_nothing(cli, sample_dir, tmp_path):
    r = cli(["synth", sample_dir / "llava.json", "-o", tmp_path / "data", "--executor", "ray",
             "--ray-address", "127.0.0.1:1"])
    assert r.exit_code == 1 and "cannot reach a Ray cluster at 127.0.0.1:1" in r.stderr
    assert not (tmp_path / "data").exists()
