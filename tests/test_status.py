"""`povid status`: per stage shards done/total, rows, failures (retryable), drops by reason, usage, exports."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from povid_cli.core.errors import RowError
from povid_cli.core.runner import run_stage
from povid_cli.core.stage import Result, Stage
from povid_cli.core.store import Dataset


@dataclass(frozen=True)
class FakeFilterConfig:
    threshold: float = 0.5


class FakeFilter(Stage):
    """Shaped like `filter`: keeps some rows, drops others with a reason, fails a few, spends tokens."""

    name = "filter"
    reads = ("items",)
    writes = ("pairs", "dropped")
    schemas = {"pairs": pa.schema([("id", pa.string()), ("item_id", pa.string())]),
               "dropped": pa.schema([("id", pa.string()), ("item_id", pa.string()), ("drop_reason", pa.string())])}
    Config = FakeFilterConfig

    def process(self, batch):
        pairs, dropped, failed = [], [], []

        def one(row):
            n = int(row["chosen"].split()[-1])
            if n % 5 == 4:
                raise RowError("judge timed out", retryable=True)
            if n % 5 == 3:
                raise RowError("empty answer")
            if n % 3 == 0:
                dropped.append({"id": row["id"], "item_id": row["id"], "drop_reason": "identical" if n % 2 else "too_short"})
                return []
            return [{"id": row["id"], "item_id": row["id"]}]

        pairs, failed = self.map_rows(batch.rows, one)
        return Result({"pairs": pairs, "dropped": dropped}, failed,
                      {"prompt_tokens": 100 * len(batch.rows), "completion_tokens": 10 * len(batch.rows), "cost_usd": 0.001})


def test_status_table_and_json(cli, make_items):
    data = make_items([{"chosen": f"answer {i}"} for i in range(10)], shard_size=4)  # shards of 4, 4, 2
    ds = Dataset.open(str(data))
    with ds.lock():
        run_stage(ds, FakeFilter(FakeFilterConfig()), limit=8)  # two of the three shards

    r = cli(["status", data, "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    st = {s["stage"]: s for s in info["stages"]}
    f = st["filter"]
    # answers 0..7: 3 and 4 fail (4 retryable), 0 and 6 dropped (too_short), the rest kept
    assert (f["shards_done"], f["shards_total"]) == (2, 3)
    assert f["rows_in"] == 8
    assert f["rows_out"] == {"pairs": 4}
    assert (f["failed"], f["retryable"]) == (2, 1)
    assert f["dropped"] == 2 and f["dropped_by_reason"] == {"too_short": 2}
    assert f["usage"]["prompt_tokens"] == 800 and abs(f["usage"]["cost_usd"] - 0.002) < 1e-9
    assert f["config_hash"] == FakeFilter(FakeFilterConfig()).config_hash()
    assert f["last_run_seconds"] is not None
    assert st["hallucinate"]["run"] is False

    r = cli(["status", data])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "filter" in out and "2/3" in out and "4 pairs" in out
    assert "1 retryable" in out and "too_short" in out and "880 tok" in out and "$0.0020" in out


def test_status_of_the_sample_with_an_export(cli, sample_data, tmp_path):
    r = cli(["status", sample_data, "--json"])
    info = json.loads(r.stdout)
    ingest = info["stages"][0]
    assert ingest["stage"] == "ingest" and ingest["rows_out"] == {"items": 22}
    assert (ingest["shards_done"], ingest["shards_total"], ingest["failed"]) == (1, 1, 0)
    assert info["exports"] == []

    # An export is listed once made, and no more once its folder is gone.
    (tmp_path / "trl").mkdir()
    ds = Dataset.open(str(sample_data))
    ds.manifest["exports"] = [{"format": "trl", "path": str(tmp_path / "trl"), "kind": "all", "rows": 3, "time": "now"}]
    ds.save_manifest()
    r = cli(["status", sample_data])
    assert r.exit_code == 0
    assert "trl: 3 rows" in r.stdout and "ingest" in r.stdout and "22 items" in r.stdout
    (tmp_path / "trl").rmdir()
    assert "trl: 3 rows" not in cli(["status", sample_data]).stdout


def test_not_a_dataset_is_one_clear_line(cli, tmp_path):
    (tmp_path / "x").mkdir()
    r = cli(["status", tmp_path / "x"])
    assert r.exit_code == 1
    assert "is not a povid dataset" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = cli(["status", tmp_path / "missing"])
    assert r.exit_code == 1 and "does not exist" in r.output
