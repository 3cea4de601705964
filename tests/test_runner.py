"""The runner: shards, resume keyed on config, failed rows, limit, parallel workers."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pytest

from povid_cli.core.errors import RowError
from povid_cli.core.executors import LocalExecutor
from povid_cli.core.runner import run_stage
from povid_cli.core.stage import Result, Stage
from povid_cli.core.store import Dataset


@dataclass(frozen=True)
class ShoutConfig:
    suffix: str = "!"
    fail_on: str = ""  # rows whose chosen contains this fail
    transient_on: str = ""


class Shout(Stage):
    name = "shout"
    reads = ("items",)
    writes = ("shouted",)
    schemas = {"shouted": pa.schema([("id", pa.string()), ("text", pa.string())])}
    Config = ShoutConfig
    batch_size = 2
    calls = 0

    def process(self, batch):
        def one(row):
            if self.config.fail_on and self.config.fail_on in row["chosen"]:
                raise RowError("planted failure")
            if self.config.transient_on and self.config.transient_on in row["chosen"]:
                raise RowError("rate limited", retryable=True)
            return [{"id": row["id"], "text": row["chosen"].upper() + self.config.suffix}]

        return Result.of(self.map_rows(batch.rows, one))


def _items(n):
    return [{"prompt": f"q{i}", "chosen": f"answer {i}"} for i in range(n)]


def test_stage_writes_one_shard_per_items_shard_and_resumes(make_items):
    data = make_items(_items(5), shard_size=2)
    ds = Dataset.open(str(data))
    run = run_stage(ds, Shout(ShoutConfig()))
    assert (run.shards_run, run.rows_out["shouted"]) == (3, 5)
    assert ds.shard_ids("shouted") == [0, 1, 2]
    texts = ds.read_all("shouted").column("text").to_pylist()
    assert texts == [f"ANSWER {i}!" for i in range(5)]
    again = run_stage(ds, Shout(ShoutConfig()))
    assert (again.shards_run, again.shards_skipped) == (0, 3)
    changed = run_stage(ds, Shout(ShoutConfig(suffix="?")))
    assert changed.shards_run == 3
    assert ds.read_all("shouted").column("text").to_pylist()[0] == "ANSWER 0?"
    m = Dataset.open(str(data)).manifest["stages"]["shout"]
    assert m["config"] == {"suffix": "?", "fail_on": "", "transient_on": ""} and len(m["shards"]) == 3


def test_failed_rows_are_kept_with_their_error_and_transient_ones_retried(make_items):
    data = make_items(_items(4), shard_size=4)
    ds = Dataset.open(str(data))
    run = run_stage(ds, Shout(ShoutConfig(fail_on="answer 1", transient_on="answer 2")))
    assert run.failed == 2 and run.rows_out["shouted"] == 2
    failed = ds.read_all("failed/shout").to_pylist()
    assert {f["error"] for f in failed} == {"planted failure", "rate limited"}
    assert [f["retryable"] for f in failed] == [False, True]
    # the shard has a retryable failure: the next run does it again
    assert run_stage(ds, Shout(ShoutConfig(fail_on="answer 1", transient_on="answer 2"))).shards_run == 1
    # once only permanent failures are left, the shard counts as done
    fixed = run_stage(ds, Shout(ShoutConfig(fail_on="answer 1", transient_on="")))
    assert fixed.shards_run == 1 and fixed.failed == 1
    assert run_stage(ds, Shout(ShoutConfig(fail_on="answer 1"))).shards_run == 0


def test_limit_processes_the_first_rows_and_a_full_run_completes_them(make_items):
    data = make_items(_items(5), shard_size=2)
    ds = Dataset.open(str(data))
    run = run_stage(ds, Shout(ShoutConfig()), limit=3)
    assert run.rows_in == 3 and ds.shard_ids("shouted") == [0, 1]
    full = run_stage(ds, Shout(ShoutConfig()))
    assert full.shards_run == 2 and full.shards_skipped == 1  # shard 1 was cut by the limit
    assert ds.read_all("shouted").num_rows == 5


def test_process_pool_gives_the_same_rows_as_inline(make_items, tmp_path):
    a = make_items(_items(9), shard_size=4, path=tmp_path / "a")
    b = make_items(_items(9), shard_size=4, path=tmp_path / "b")
    run_stage(Dataset.open(str(a)), Shout(ShoutConfig()))
    ex = LocalExecutor(2)
    try:
        run_stage(Dataset.open(str(b)), Shout(ShoutConfig()), ex)
    finally:
        ex.close()
    ta = Dataset.open(str(a)).read_all("shouted")
    tb = Dataset.open(str(b)).read_all("shouted")
    assert ta.equals(tb)


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(make_items):
    import json
    import os

    from povid_cli.core.errors import PovidError

    data = make_items(_items(1))
    ds = Dataset.open(str(data))
    with ds.lock():
        with pytest.raises(PovidError, match="in use by another povid run"):
            with Dataset.open(str(data)).lock():
                pass
    # a lock left by a process that no longer exists
    with open(os.path.join(data, ".lock"), "w") as f:
        json.dump({"pid": 2**22 + 12345, "host": os.uname().nodename, "since": "then"}, f)
    with Dataset.open(str(data)).lock():
        pass
    assert not os.path.exists(os.path.join(data, ".lock"))
