"""An export after a refresh converts only the shards that changed: the others' files are linked from the
previous export, and the result is the same as an export made from scratch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest


def povid_records(sample_dir: Path, tag: str) -> list[dict]:
    """The sample's records in POVID format (each with a rejected answer), ids made unique by `tag`."""
    recs = json.loads((sample_dir / "llava.json").read_text())
    for rec in recs:
        rec["id"] = f"{tag}-{rec['id']}"
        rec["conversations"][1]["value"] += f" ({tag})"  # items are identified by content: make new ones
        rec["rejected_conversations"] = [rec["conversations"][0],
                                         {"from": "gpt", "value": f"There is a fork and a knife. {rec['id']}"}]
    return recs


@pytest.fixture
def grow(cli, sample_dir, tmp_path):
    """grow(tag): ingest one more batch of the sample's records into DATA (a new items shard) and filter."""
    data = tmp_path / "data"

    def add(tag: str) -> Path:
        ann = tmp_path / f"{tag}.json"
        ann.write_text(json.dumps(povid_records(sample_dir, tag)))
        r = cli(["ingest", ann, "--image-root", sample_dir, "-o", data, "--workers", "1", "--shard-size", "22"])
        assert r.exit_code == 0, r.output
        r = cli(["filter", data, "--no-hallucination-check", "--no-dedup", "--min-similarity", "0"])
        assert r.exit_code == 0, r.output
        return data

    return add


def marker(out: Path) -> dict:
    return json.loads((out / "povid-export.json").read_text())


def test_trl_export_links_unchanged_shards_and_converts_new_ones(grow, cli, tmp_path):
    data = grow("a")
    out = tmp_path / "trl"
    assert cli(["export", data, "-o", out]).exit_code == 0
    first = marker(out)
    assert first["converted_shards"] == 1 and first["reused_shards"] == 0
    inode = os.stat(out / "train-00000.parquet").st_ino

    grow("b")
    r = cli(["export", data, "-o", out])
    assert r.exit_code == 0, r.output
    second = marker(out)
    assert (second["reused_shards"], second["converted_shards"]) == (1, 1)
    assert "1 shard(s) converted, 1 unchanged (linked)" in r.output
    assert second["files"] == ["train-00000.parquet", "train-00001.parquet"]
    assert os.stat(out / "train-00000.parquet").st_ino == inode  # the same file, not a rewrite
    assert second["pairs"] == 2 * first["pairs"]

    # the same as an export from scratch, row for row
    fresh = tmp_path / "fresh"
    assert cli(["export", data, "-o", fresh]).exit_code == 0
    for name in second["files"]:
        assert pq.read_table(out / name).equals(pq.read_table(fresh / name))

    # an option that changes every file converts every shard
    assert cli(["export", data, "-o", out, "--kind", "text"]).exit_code == 0
    assert marker(out)["reused_shards"] == 0


def test_json_export_reuses_fragments_and_images(grow, cli, tmp_path):
    data = grow("a")
    out = tmp_path / "llava"
    assert cli(["export", data, "-o", out, "--format", "llava"]).exit_code == 0
    grow("b")
    assert cli(["export", data, "-o", out, "--format", "llava"]).exit_code == 0
    assert marker(out)["reused_shards"] == 1
    fresh = tmp_path / "fresh"
    assert cli(["export", data, "-o", fresh, "--format", "llava"]).exit_code == 0
    assert (out / "llava.json").read_bytes() == (fresh / "llava.json").read_bytes()
    assert sorted(os.listdir(out / "images")) == sorted(os.listdir(fresh / "images"))


def test_a_file_removed_from_the_export_is_converted_again(grow, cli, tmp_path):
    data = grow("a")
    out = tmp_path / "trl"
    assert cli(["export", data, "-o", out]).exit_code == 0
    before = pq.read_table(out / "train-00000.parquet")
    os.remove(out / "train-00000.parquet")
    grow("b")
    r = cli(["export", data, "-o", out])
    assert r.exit_code == 0, r.output
    assert pq.read_table(out / "train-00000.parquet").equals(before)
