"""`povid ingest`: the input formats it reads, stable ids, and what it refuses to overwrite."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from povid_cli.core.store import Dataset


def items(data: Path) -> list[dict]:
    t = Dataset.open(str(data)).read_all("items")
    return t.to_pylist() if t is not None else []


def given(data: Path) -> list[dict]:
    t = Dataset.open(str(data)).read_all("given")
    return t.to_pylist() if t is not None else []


def write_image(path: Path, color=(200, 40, 40), size=(48, 32), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def test_sample_gives_22_items_with_source_ids_and_again_adds_none(cli, sample_dir, tmp_path):
    data = tmp_path / "data"
    r = cli(["ingest", sample_dir / "llava.json", "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    rows = items(data)
    expected = {rec["id"] for rec in json.loads((sample_dir / "llava.json").read_text())}
    assert len(rows) == 22
    assert {r["source_id"] for r in rows} == expected
    assert len({r["id"] for r in rows}) == 22
    first = next(r for r in rows if r["source_id"] == "extreme_ironing_detail")
    assert first["prompt"] == "Describe this image in detail."  # <image> tag stripped
    assert first["task"] == "caption" and first["objects"] == ["person", "car"]
    assert first["image"]["bytes"] == (sample_dir / "images/extreme_ironing.jpg").read_bytes()  # RGB JPEG kept as is
    for row in rows:  # full-size dimensions, whether the image was kept as is or re-encoded
        assert (row["width"], row["height"]) == Image.open(sample_dir / row["image"]["path"]).size

    r = cli(["ingest", sample_dir / "llava.json", "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "0 new items" in r.output and "22 already present" in r.output
    assert len(items(data)) == 22
    assert Dataset.open(str(data)).shard_ids("items") == [0]


def test_llava_jsonl_and_multi_turn_conversations(cli, tmp_path):
    write_image(tmp_path / "src/a.jpg")
    write_image(tmp_path / "src/b.png", color=(10, 200, 10))
    recs = [
        {"id": "one", "image": "a.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Why might it be red?"}, {"from": "gpt", "value": "Because it was painted red."}]},
        {"id": "two", "image": "b.png", "conversations": [
            {"from": "human", "value": "What is shown? <image>"}, {"from": "gpt", "value": "A green square."}]},
    ]
    (tmp_path / "src/ann.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    data = tmp_path / "data"
    r = cli(["ingest", tmp_path / "src/ann.jsonl", "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    rows = sorted(items(data), key=lambda r: (r["source_id"], r["turn"]))
    assert [(r["source_id"], r["turn"], r["prompt"], r["chosen"]) for r in rows] == [
        ("one", 0, "What colour is the square?", "Red."),
        ("one", 1, "Why might it be red?", "Because it was painted red."),
        ("two", 0, "What is shown?", "A green square."),
    ]
    assert rows[1]["task"] == "reasoning" and rows[0]["task"] == "vqa"
    assert rows[0]["image_sha256"] == rows[1]["image_sha256"] and rows[0]["id"] != rows[1]["id"]
    assert all(r["has_answer"] for r in rows) and given(data) == []  # no rejected answers given


def test_povid_json_keeps_the_rejected_answer(cli, tmp_path):
    write_image(tmp_path / "src/img/cat.jpg")
    human = {"from": "human", "value": "<image>\nDescribe this image in detail."}
    recs = [{"id": "p1", "image": "img/cat.jpg",
             "conversations": [human, {"from": "gpt", "value": "A red square."}],
             "rejected_conversations": [human, {"from": "gpt", "value": "A red square next to a fork."}]}]
    (tmp_path / "src/povid.json").write_text(json.dumps(recs))
    data = tmp_path / "data"
    r = cli(["ingest", tmp_path / "src/povid.json", "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    [row] = items(data)
    [pair] = given(data)
    assert (row["chosen"], pair["rejected"], row["source_id"]) == ("A red square.", "A red square next to a fork.", "p1")
    assert pair["item_id"] == row["id"] and pair["source_id"] == "p1"


def test_coco_captions_with_instances_give_objects(cli, tmp_path):
    write_image(tmp_path / "coco/train/000001.jpg")
    write_image(tmp_path / "coco/train/000002.jpg", color=(0, 0, 200))
    images = [{"id": 1, "file_name": "000001.jpg"}, {"id": 2, "file_name": "000002.jpg"}]
    captions = {"images": images, "annotations": [
        {"id": 10, "image_id": 1, "caption": "A dog."},
        {"id": 11, "image_id": 1, "caption": "A brown dog sits on a sofa."},
        {"id": 12, "image_id": 2, "caption": "A bus on a street."}]}
    instances = {"images": images, "categories": [{"id": 18, "name": "dog"}, {"id": 63, "name": "couch"},
                                                 {"id": 6, "name": "bus"}],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 18}, {"id": 2, "image_id": 1, "category_id": 63},
                                 {"id": 3, "image_id": 2, "category_id": 6}]}
    (tmp_path / "coco/captions.json").write_text(json.dumps(captions))
    (tmp_path / "coco/instances.json").write_text(json.dumps(instances))
    data = tmp_path / "data"
    r = cli(["ingest", tmp_path / "coco/captions.json", tmp_path / "coco/instances.json",
             "--image-root", tmp_path / "coco/train", "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    rows = {r["source_id"]: r for r in items(data)}
    assert set(rows) == {"1", "2"}
    assert rows["1"]["chosen"] == "A brown dog sits on a sofa."  # the longest caption
    assert rows["1"]["objects"] == ["couch", "dog"] and rows["2"]["objects"] == ["bus"]
    assert rows["1"]["task"] == "caption" and rows["1"]["prompt"] == "Describe this image in detail."


def test_image_folder_with_and_without_sidecar_answers(cli, tmp_path):
    write_image(tmp_path / "photos/a.jpg")
    (tmp_path / "photos/a.txt").write_text("A red rectangle.\n")
    write_image(tmp_path / "photos/sub/b.png", color=(1, 2, 3))
    (tmp_path / "photos/notes.md").write_text("not an image")
    data = tmp_path / "data"
    r = cli(["ingest", tmp_path / "photos", "-o", data, "--prompt", "What do you see?", "--workers", "1"])
    assert r.exit_code == 0, r.output
    rows = {r["source_id"]: r for r in items(data)}
    assert set(rows) == {"a.jpg", "sub/b.png"}
    assert rows["a.jpg"]["chosen"] == "A red rectangle." and rows["a.jpg"]["has_answer"] is True
    assert rows["sub/b.png"]["chosen"] == "" and rows["sub/b.png"]["has_answer"] is False
    assert {r["prompt"] for r in rows.values()} == {"What do you see?"}

    # Same folder, new photo (the cron use case): only the new one is added.
    write_image(tmp_path / "photos/c.jpg", color=(9, 9, 9))
    r = cli(["ingest", tmp_path / "photos", "-o", data, "--prompt", "What do you see?", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "1 new items" in r.output and "2 already present" in r.output
    assert len(items(data)) == 3


def test_image_root_resolves_annotation_paths(cli, tmp_path):
    write_image(tmp_path / "images/x.jpg")
    ann = tmp_path / "anns/llava.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps([{"id": "x", "image": "x.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]}]))
    r = cli(["ingest", ann, "-o", tmp_path / "d1", "--workers", "1"])  # x.jpg is not beside the annotation
    assert r.exit_code == 1 and "x.jpg" in r.output
    r = cli(["ingest", ann, "--image-root", tmp_path / "images", "-o", tmp_path / "d2", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert [row["source_id"] for row in items(tmp_path / "d2")] == ["x"]


def test_trl_parquet_round_trip(cli, sample_dir, tmp_path):
    """export --format trl, then ingest the export: the same items come back, rejected included."""
    recs = json.loads((sample_dir / "llava.json").read_text())[:4]
    for rec in recs:
        rec["rejected_conversations"] = [rec["conversations"][0], {"from": "gpt", "value": "A fork on a plate."}]
    ann = tmp_path / "povid.json"
    ann.write_text(json.dumps(recs))
    data = tmp_path / "data"
    assert cli(["ingest", ann, "--image-root", sample_dir, "-o", data, "--workers", "1"]).exit_code == 0
    r = cli(["export", data, "-o", tmp_path / "trl", "--format", "trl"])
    assert r.exit_code == 0, r.output
    [shard] = sorted((tmp_path / "trl").glob("*.parquet"))
    r = cli(["ingest", shard, "-o", tmp_path / "again", "--workers", "1"])
    assert r.exit_code == 0, r.output
    key = lambda r: r["id"]  # noqa: E731
    before, after = sorted(items(data), key=key), sorted(items(tmp_path / "again"), key=key)
    assert [(r["id"], r["prompt"], r["chosen"], r["image"]["bytes"]) for r in before] == \
           [(r["id"], r["prompt"], r["chosen"], r["image"]["bytes"]) for r in after]
    pairs = lambda d: sorted((g["id"], g["item_id"], g["rejected"]) for g in given(d))  # noqa: E731
    assert len(pairs(data)) == 4 and pairs(data) == pairs(tmp_path / "again")


def test_output_folder_that_is_not_a_dataset_is_refused(cli, sample_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    r = cli(["ingest", sample_dir / "llava.json", "-o", out, "--workers", "1"])
    assert r.exit_code == 1
    assert "not a povid dataset" in r.output and "Traceback" not in r.output
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "precious"

    afile = tmp_path / "afile"
    afile.write_text("x")
    r = cli(["ingest", sample_dir / "llava.json", "-o", afile, "--workers", "1"])
    assert r.exit_code == 1 and afile.read_text() == "x"


def test_limit_takes_the_first_n(cli, sample_dir, tmp_path):
    r = cli(["ingest", sample_dir / "llava.json", "-o", tmp_path / "d", "--limit", "5", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert len(items(tmp_path / "d")) == 5
