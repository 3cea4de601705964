"""`povid export`: the trl / povid / llava / sharegpt layouts, kinds and limits, atomic replacement."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from povid_cli.export import job as exporter
from povid_cli.core.schemas import PAIRS
from povid_cli.core.store import Dataset
from povid_cli.export import formats as conv


@pytest.fixture
def povid_data(cli, sample_dir, tmp_path) -> Path:
    """The sample in POVID format (every record has a rejected answer): 22 items = 22 text pairs, 11 images."""
    recs = json.loads((sample_dir / "llava.json").read_text())
    for rec in recs:
        rec["rejected_conversations"] = [rec["conversations"][0],
                                         {"from": "gpt", "value": "There is a fork and a knife. " + rec["id"]}]
    ann = tmp_path / "povid_in.json"
    ann.write_text(json.dumps(recs))
    data = tmp_path / "data"
    r = cli(["ingest", ann, "--image-root", sample_dir, "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    return data


def add_pairs(data: Path, kinds: list[str], n_items: int | None = None) -> None:
    """A `pairs` output as filter would write it (one shard per items shard), with a score column."""
    ds = Dataset.open(str(data))
    items = ds.read_shard("items", 0).to_pylist()
    rows = []
    for i, kind in enumerate(kinds):
        it = items[i % (n_items or len(items))]
        rej = f"{kind} rejected {i}"
        rows.append({"id": conv.pair_id(it["id"], kind, rej), "item_id": it["id"], "kind": kind, "prompt": it["prompt"],
                     "chosen": it["chosen"], "rejected": rej, "image": it["image"],
                     "variant": "diffusion" if kind == "image" else None, "task": it["task"], "source": it["source"],
                     "source_id": it["source_id"], "score": 0.5})
    schema = PAIRS.append(pa.field("score", pa.float64()))
    ds.commit_shard("filter", "pairs", 0, pa.Table.from_pylist(rows, schema=schema), "k")


@pytest.mark.train
def test_trl_export_loads_with_datasets_as_dpo_rows(cli, povid_data, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "trl"
    r = cli(["export", povid_data, "-o", out, "--format", "trl"])
    assert r.exit_code == 0, r.output
    assert "22 pairs from items (22 text)" in r.output
    ds = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    assert len(ds) == 22
    f = ds.features
    assert isinstance(f["images"], datasets.List) and isinstance(f["images"].feature, datasets.Image)
    row = ds[0]
    assert row["images"][0].mode == "RGB" and row["images"][0].size[0] > 0
    assert row["prompt"] == [{"role": "user", "content": [{"type": "image", "text": None},
                                                          {"type": "text", "text": "Describe this image in detail."}]}]
    assert row["chosen"][0]["role"] == "assistant" and row["chosen"][0]["content"][0]["text"].startswith("A man in a yellow")
    assert row["rejected"][0]["content"][0]["text"] == "There is a fork and a knife. extreme_ironing_detail"
    assert (row["kind"], row["source_id"], row["task"]) == ("text", "extreme_ironing_detail", "caption")
    assert {"id", "item_id", "source", "variant"} <= set(ds.column_names)
    # What TRL's collator does with a row: one image placeholder, filled with the one image.
    from trl.data_utils import prepare_multimodal_messages

    msgs = prepare_multimodal_messages(row["prompt"], images=row["images"])
    assert msgs[0]["content"][0]["image"] is row["images"][0]

    marker = json.loads((out / "povid-export.json").read_text())
    assert marker["format"] == "trl" and marker["rows"] == 22
    m = Dataset.open(str(povid_data)).manifest
    assert [(e["format"], e["path"], e["rows"]) for e in m["exports"]] == [("trl", str(out), 22)]


def test_povid_llava_sharegpt_json(cli, povid_data, tmp_path):
    for fmt in ("povid", "llava", "sharegpt"):
        r = cli(["export", povid_data, "-o", tmp_path / fmt, "--format", fmt])
        assert r.exit_code == 0, r.output
        # 11 distinct photos behind 22 pairs: each image written once.
        assert len(list((tmp_path / fmt / "images").iterdir())) == 11

    povid = json.loads((tmp_path / "povid/povid.json").read_text())
    assert len(povid) == 22
    p = povid[0]
    assert p["conversations"][0] == {"from": "human", "value": "<image>\nDescribe this image in detail."}
    assert p["conversations"][1]["from"] == "gpt" and p["conversations"][1]["value"].startswith("A man in a yellow")
    assert p["rejected_conversations"][0] == p["conversations"][0]
    assert p["rejected_conversations"][1]["value"] == "There is a fork and a knife. extreme_ironing_detail"
    assert (tmp_path / "povid" / p["image"]).is_file()

    llava = json.loads((tmp_path / "llava/llava.json").read_text())
    assert len(llava) == 22 and all(len(r["conversations"]) == 2 and "rejected_conversations" not in r for r in llava)
    assert all((tmp_path / "llava" / r["image"]).is_file() for r in llava)

    share = json.loads((tmp_path / "sharegpt/sharegpt.json").read_text())
    s = share[0]
    assert s["conversations"] == [p["conversations"][0]]
    assert s["chosen"]["from"] == "gpt" and s["rejected"]["value"].endswith("extreme_ironing_detail")
    assert (tmp_path / "sharegpt" / s["images"][0]).is_file()

    # The povid export is POVID-format input again: ingesting it gives back the same pairs.
    r = cli(["ingest", tmp_path / "povid/povid.json", "-o", tmp_path / "again", "--workers", "1"])
    assert r.exit_code == 0, r.output
    again = Dataset.open(str(tmp_path / "again")).read_all("items").to_pylist()
    orig = Dataset.open(str(povid_data)).read_all("items").to_pylist()

    def triples(data, rows):  # (prompt, chosen, rejected) per given pair (the rejected answers live in `given`)
        by_id = {r["id"]: r for r in rows}
        return sorted((by_id[g["item_id"]]["prompt"], by_id[g["item_id"]]["chosen"], g["rejected"])
                      for g in Dataset.open(str(data)).read_all("given").to_pylist())

    assert len(triples(povid_data, orig)) == 22
    assert triples(tmp_path / "again", again) == triples(povid_data, orig)
    # Ids hash the source bytes: photos kept byte for byte at ingest keep their id through the round trip.
    kept = {r["id"] for r in orig if r["image_sha256"] == hashlib.sha256(r["image"]["bytes"]).hexdigest()}
    assert len(kept) >= 10 and kept <= {r["id"] for r in again}


def test_pairs_kind_and_limit(cli, povid_data, tmp_path):
    add_pairs(povid_data, ["text", "image", "image", "text", "image"])
    r = cli(["export", povid_data, "-o", tmp_path / "img", "--kind", "image", "--format", "sharegpt"])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "img/sharegpt.json").read_text())
    assert [x["kind"] for x in rows] == ["image"] * 3 and rows[0]["rejected"]["value"] == "image rejected 1"

    r = cli(["export", povid_data, "-o", tmp_path / "lim", "--limit", "2", "--format", "povid"])
    assert r.exit_code == 0, r.output
    assert [x["rejected_conversations"][1]["value"] for x in json.loads((tmp_path / "lim/povid.json").read_text())] == \
        ["text rejected 0", "image rejected 1"]

    # llava: the chosen answers, once per item even when an item has several pairs.
    add_pairs(povid_data, ["text", "image", "text"] * 2, n_items=3)  # items 0,1,2 twice
    r = cli(["export", povid_data, "-o", tmp_path / "llava", "--format", "llava"])
    assert r.exit_code == 0, r.output
    assert len(json.loads((tmp_path / "llava/llava.json").read_text())) == 3


def test_no_pairs_is_one_clear_line(cli, sample_data, tmp_path):
    r = cli(["export", sample_data, "-o", tmp_path / "out"])
    assert r.exit_code == 1
    assert "no pairs to export" in r.output and "povid filter" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()
    r = cli(["export", sample_data, "-o", tmp_path / "out", "--format", "parquet"])
    assert r.exit_code == 2 and "unknown export format" in r.output


def test_refuses_to_replace_what_is_not_an_export(cli, povid_data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = cli(["export", povid_data, "-o", mine])
    assert r.exit_code == 1 and "not a povid export" in r.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    r = cli(["export", povid_data, "-o", povid_data])
    assert r.exit_code == 2 and "replace the dataset itself" in r.output
    assert Dataset.open(str(povid_data)).has("items")
    r = cli(["export", povid_data, "-o", povid_data / "exports" / "trl"])  # inside DATA is fine
    assert r.exit_code == 0, r.output


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith((".tmp-", ".old-")))


def test_replacement_is_atomic(cli, povid_data, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    assert cli(["export", povid_data, "-o", out, "--format", "povid", "--limit", "3"]).exit_code == 0
    old = json.loads((out / "povid.json").read_text())
    assert len(old) == 3

    seen = {}
    real_swap = exporter.swap_in

    def checking_swap(tmp, target):
        # The new export is complete beside OUT, and OUT still is the old one, readable as before.
        seen["old_still_there"] = json.loads((out / "povid.json").read_text()) == old
        seen["new_complete"] = len(json.loads(Path(tmp.path, "povid.json").read_text())) == 22
        real_swap(tmp, target)

    monkeypatch.setattr(exporter, "swap_in", checking_swap)
    assert cli(["export", povid_data, "-o", out, "--format", "povid"]).exit_code == 0
    assert seen == {"old_still_there": True, "new_complete": True}
    assert len(json.loads((out / "povid.json").read_text())) == 22
    assert _siblings(out) == []

    # A failure while writing leaves the previous export untouched and no temporary folder behind.
    def boom(pairs):
        raise RuntimeError("disk full")

    monkeypatch.setitem(conv.JSON_CONVERTERS, "povid", boom)  # in this process: --workers 1
    # (another --limit: with the same options the unchanged shard would be linked from OUT, not converted)
    r = cli(["export", povid_data, "-o", out, "--format", "povid", "--workers", "1", "--limit", "21"])
    assert r.exit_code == 1 and "disk full" in r.output and "Traceback" not in r.output
    assert len(json.loads((out / "povid.json").read_text())) == 22
    assert _siblings(out) == []


def test_export_to_a_url(povid_data):
    """OUT may be any fsspec URL (here the in-memory filesystem), replaced the same way."""
    fsspec = pytest.importorskip("fsspec")
    ds = Dataset.open(str(povid_data))
    url = f"memory://povid-test-{os.getpid()}/exp"
    s1 = exporter.export_dataset(ds, url, "llava", limit=2)
    s2 = exporter.export_dataset(ds, url, "trl")
    assert (s1["rows"], s2["rows"]) == (2, 22)
    fs = fsspec.filesystem("memory")
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(url.removeprefix("memory://"), detail=False))
    assert names == ["povid-export.json", "train-00000.parquet"]
    fs.rm(url.removeprefix("memory:/").split("/exp")[0], recursive=True)
