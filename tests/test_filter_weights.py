"""`filter --weight-by NAME` (MMedPO-style pair weights): the raw score in `pairs`, the weight in [0.2, 1] in the
export, normalised over the whole dataset at every export (so a cron refresh rescales every pair alike)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from povid_cli.core.store import Dataset
from stages.weights import FLOOR, normalise, raw_score, weights

CHOSEN = "A dog sleeps on a couch."
# rejected answers naming 1, 2, 3 and 4 objects the image does not have
REJECTED = ["A dog and a cat sleep on a couch.",
            "A dog and a cat sleep on a couch next to a laptop.",
            "A dog, a cat and a bird sleep on a couch next to a laptop.",
            "A dog, a cat and a bird sleep on a couch next to a laptop and a vase."]


def items(rejected: list[str]) -> list[dict]:
    return [{"prompt": f"Describe image {i}.", "chosen": CHOSEN, "rejected": r, "objects": ["dog", "couch"]}
            for i, r in enumerate(rejected)]


def trl_weights(path) -> dict[str, float]:
    tables = [pq.read_table(p) for p in sorted(path.glob("train-*.parquet"))]
    return {i: w for t in tables for i, w in zip(t.column("id").to_pylist(), t.column("weight").to_pylist())}


def test_scores_and_normalisation():
    row = {"hallucinated_objects": ["cat", "bird"], "changed_attributes": ["two->three"], "n_edits": 3}
    assert raw_score(row, "hallucinated_objects") == 2 and raw_score(row, "hallucinations") == 3
    assert raw_score(row, "n_edits") == 3 and raw_score({"hallucinated_objects": None}, "hallucinated_objects") == 0
    ws, b = weights([1.0, 2.0, 3.0, None, 5.0])
    assert b == (1.0, 5.0) and ws == [pytest.approx(x) for x in (0.2, 0.4, 0.6)] + [None, 1.0]
    assert normalise(7.0, 3.0, 3.0) == 1.0  # every pair scored alike: nothing to tell them apart
    with pytest.raises(ValueError, match="unknown weight score"):
        raw_score(row, "judge")


def test_weight_by_stores_the_raw_score_and_the_export_scales_it(cli, make_items, tmp_path):
    data = make_items(items(REJECTED), shard_size=2)
    r = cli(["filter", data, "--weight-by", "hallucinated_objects", "--min-similarity", "0"])
    assert r.exit_code == 0, r.output
    pairs = Dataset.open(str(data)).read_all("pairs").to_pylist()
    assert sorted(p["weight_score"] for p in pairs) == [1.0, 2.0, 3.0, 4.0]
    assert all(p["weight_score"] == len(p["hallucinated_objects"]) for p in pairs)
    r = cli(["export", data, "-o", tmp_path / "trl", "--format", "trl"])
    assert r.exit_code == 0, r.output
    assert "weights: weight_score 1..4 scaled to [0.2, 1]" in r.output
    w = trl_weights(tmp_path / "trl")
    by_score = {p["weight_score"]: w[p["id"]] for p in pairs}
    assert min(w.values()) == pytest.approx(FLOOR) and max(w.values()) == pytest.approx(1.0)
    assert by_score == {1.0: pytest.approx(0.2), 2.0: pytest.approx(0.2 + 0.8 / 3), 3.0: pytest.approx(0.2 + 1.6 / 3),
                        4.0: pytest.approx(1.0)}
    meta = json.loads((tmp_path / "trl" / "povid-export.json").read_text())
    assert meta["weights"] == {"score_min": 1.0, "score_max": 4.0, "floor": FLOOR}
    # the JSON formats carry the weight where a record is one pair
    r = cli(["export", data, "-o", tmp_path / "sg", "--format", "sharegpt"])
    assert r.exit_code == 0, r.output
    records = json.loads((tmp_path / "sg" / "sharegpt.json").read_text())
    assert {rec["id"]: rec["weight"] for rec in records} == pytest.approx(w)
    # train reads the same weights from the dataset itself (--weight-column weight)
    from povid_cli.train.data import read_pairs

    rows = read_pairs(str(data), weight_column="weight")
    assert sorted(r["weight"] for r in rows) == pytest.approx(sorted(w.values()))


def test_a_refresh_rescales_every_pair_and_rewrites_no_earlier_shard(cli, make_items, tmp_path):
    data = make_items(items(REJECTED[:2]), shard_size=2)
    args = ["filter", data, "--weight-by", "hallucinated_objects", "--min-similarity", "0"]
    assert cli(args).exit_code == 0
    assert cli(["export", data, "-o", tmp_path / "trl"]).exit_code == 0
    first = trl_weights(tmp_path / "trl")
    assert sorted(first.values()) == pytest.approx([0.2, 1.0])  # scores 1 and 2
    shard0 = (data / "pairs" / "part-00000.parquet").stat().st_mtime_ns
    make_items(items(REJECTED), shard_size=2, path=data)  # the cron run: a second shard of items (scores 3, 4)
    r = cli(args)
    assert r.exit_code == 0 and (data / "pairs" / "part-00000.parquet").stat().st_mtime_ns == shard0
    assert cli(["export", data, "-o", tmp_path / "trl"]).exit_code == 0
    second = trl_weights(tmp_path / "trl")
    # the score-1 and score-2 pairs are rescaled with the new bounds (1..4), alike with the new ones
    assert sorted(second.values()) == pytest.approx([0.2, 0.2 + 0.8 / 3, 0.2 + 1.6 / 3, 1.0])
    assert sorted(second[i] for i in first) == pytest.approx([0.2, 0.2 + 0.8 / 3])


def test_without_weight_by_nothing_changes(cli, make_items, tmp_path):
    data = make_items(items(REJECTED[:2]))
    assert cli(["filter", data, "--min-similarity", "0"]).exit_code == 0
    assert all(p["weight_score"] is None for p in Dataset.open(str(data)).read_all("pairs").to_pylist())
    assert cli(["export", data, "-o", tmp_path / "trl"]).exit_code == 0
    assert "weight" not in pq.read_table(tmp_path / "trl" / "train-00000.parquet").column_names
    r = cli(["filter", data, "--weight-by", "judge"])
    assert r.exit_code == 2 and "--weight-by must be one of hallucinated_objects" in r.output
