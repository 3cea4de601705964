"""No record silently lost: text-only records skipped (exit 0), bad text and bad file names as failed rows,
empty or unknown sources as errors that say why, URLs as sources, absolute paths inside the image root,
object boxes, multi-image items end to end, and datasets made by an older povid."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ingest_helpers import accounting, check_counts, exported_pairs, image_bytes, png, sample_rows
from povid_cli.core.images import decode_rgb
from povid_cli.core.store import Dataset


def items(data) -> list[dict]:
    t = Dataset.open(str(data)).read_all("items")
    return t.to_pylist() if t is not None else []


def failed(data) -> list[dict]:
    t = Dataset.open(str(data)).read_all("failed/ingest")
    return t.to_pylist() if t is not None else []


def turn(q, a):
    return [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}]


def test_llava_mix_text_only_records_are_skipped_and_exit_zero(cli, sample_dir, tmp_path):
    """LLaVA-1.5's mix has text-only records (no `image`): counted as skipped, not failed, so cron exits 0."""
    recs = [
        {"id": "img1", "image": "images/horse.png", "conversations": turn("What animal?", "A horse.")
         + [{"from": "human", "value": "And its colour?"}, {"from": "gpt", "value": ""}]},  # an empty answer
        {"id": "text1", "conversations": turn("What is 2 + 2?", "4.")},
        {"id": "text2", "conversations": turn("Name a colour.", "Blue.") + turn("Another?", "Red.")},
        {"id": "open", "image": "images/coffee.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"}]},
    ]
    f = tmp_path / "llava_v1_5_mix665k.json"
    f.write_text(json.dumps(recs))
    data = tmp_path / "data"
    r = cli(["ingest", f, "--image-root", sample_dir, "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "6 records -> 2 new items, 0 already present" in r.output
    assert "4 skipped (3 text_only, 1 no_answer); 0 failed" in r.output
    check_counts(cli, data, tmp_path / "out", records=6, items=2, pairs=[], skipped={"text_only": 3, "no_answer": 1})
    by_turn = {i["turn"]: i for i in items(data)}
    assert by_turn[0]["has_answer"] is True and (by_turn[1]["chosen"], by_turn[1]["has_answer"]) == ("", False)
    r = cli(["status", data])
    assert "6 records -> 2 items" in r.stdout and "4 skipped (3 text_only, 1 no_answer)" in r.stdout

    strict = tmp_path / "strict"
    r = cli(["ingest", f, "--image-root", sample_dir, "-o", strict, "--strict", "--workers", "1"])
    assert r.exit_code == 1 and "skipped with --strict: the record has no image" in r.output
    assert sorted(x["kind"] for x in failed(strict)) == ["no_answer", "text_only", "text_only", "text_only"]


def test_a_lone_surrogate_and_a_non_utf8_file_name_are_failed_rows(cli, sample_dir, tmp_path):
    rows = sample_rows()[:3]
    ann = tmp_path / "ann.json"
    bad = [{"id": r["id"], "image": r["image"], "conversations": turn(r["question"], r["answer"])} for r in rows]
    bad[1]["conversations"][0]["value"] = "<image>\nWhat is \ud800 this?"
    ann.write_text(json.dumps(bad))  # json escapes it as \ud800: valid JSON, not valid Unicode text
    data = tmp_path / "data"
    r = cli(["ingest", ann, "--image-root", sample_dir, "-o", data, "--workers", "1"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "3 records -> 2 new items" in r.output and "1 failed" in r.output
    [f] = failed(data)
    assert f["kind"] == "bad_text" and "prompt is not valid Unicode text" in f["error"] and rows[1]["id"] in f["error"]

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "good.png").write_bytes(png())
    with open(os.path.join(os.fsencode(photos), b"caf\xe9.png"), "wb") as fh:  # Latin-1, not UTF-8
        fh.write(png((1, 2, 3)))
    data = tmp_path / "data2"
    r = cli(["ingest", photos, "-o", data, "--workers", "1"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert [i["source_id"] for i in items(data)] == ["good.png"]
    [f] = failed(data)
    assert f["kind"] == "bad_name" and "caf\\xe9.png" in f["error"] and "not valid UTF-8" in f["error"]


def test_absolute_paths_inside_the_image_root_are_accepted(cli, sample_dir, tmp_path):
    ann = tmp_path / "abs.json"
    ann.write_text(json.dumps([
        {"id": "inside", "image": str(sample_dir / "images/horse.png"), "conversations": turn("What?", "A horse.")},
        {"id": "outside", "image": str(tmp_path / "abs.json"), "conversations": turn("What?", "A file.")}]))
    data = tmp_path / "data"
    r = cli(["ingest", ann, "--image-root", sample_dir, "-o", data, "--workers", "1"])
    assert r.exit_code == 1
    [row] = items(data)
    assert row["source_id"] == "inside" and row["image"]["path"] == "images/horse.png"
    assert row["source"] == "abs.json"  # the annotation file's name, never an absolute local path
    [f] = failed(data)
    assert "absolute image path refused" in f["error"] and "outside the image root" in f["error"]


def test_sources_that_yield_nothing_say_why(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    r = cli(["ingest", tmp_path / "empty", "-o", tmp_path / "d1"])
    assert r.exit_code == 1 and "an empty folder" in r.output
    hub = tmp_path / "hub/data"
    hub.mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a"], "label": [1]}), hub / "train-00000.parquet")
    r = cli(["ingest", tmp_path / "hub", "-o", tmp_path / "d2"])
    assert r.exit_code == 1 and "no known layout (columns: text, label)" in r.output
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/readme.md").write_text("hi")
    r = cli(["ingest", tmp_path / "notes", "-o", tmp_path / "d3"])
    assert r.exit_code == 1 and "no images, Parquet, Arrow" in r.output and "found: readme.md" in r.output


def test_sources_may_be_urls(cli, sample_dir, tmp_path):
    """A SRC like DATA: an fsspec URL (in-memory here) or file://, image paths resolved under the same URL."""
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    base = f"/povid-src-{os.getpid()}"
    rows = sample_rows()[:3]
    for r in rows:
        fs.pipe(f"{base}/{r['image']}", image_bytes(r["image"]))
    recs = [{"id": r["id"], "image": r["image"], "conversations": turn(r["question"], r["answer"]),
             "rejected_conversations": turn(r["question"], "A pink elephant.")} for r in rows]
    fs.pipe(f"{base}/povid.json", json.dumps(recs).encode())
    try:
        data = tmp_path / "data"
        r = cli(["ingest", f"memory://{base}/povid.json", "-o", data, "--workers", "2"])
        assert r.exit_code == 0, r.output
        check_counts(cli, data, tmp_path / "out", records=3, items=3,
                     pairs=[(r["question"], r["answer"], "A pink elephant.") for r in rows])
        r = cli(["ingest", f"memory://{base}/images", "-o", tmp_path / "folder", "--workers", "1"])
        assert r.exit_code == 0, r.output
        assert len(items(tmp_path / "folder")) == len({r["image"] for r in rows})
    finally:
        fs.rm(base, recursive=True)
    r = cli(["ingest", f"file://{sample_dir / 'llava.json'}", "-o", tmp_path / "f", "--workers", "1"])
    assert r.exit_code == 0 and "22 new items" in r.output


def test_coco_boxes_land_on_the_stored_pixels_of_an_exif_rotated_photo(cli, tmp_path):
    """COCO bbox [x, y, w, h] is measured on the file's pixels (width x height of its `images` entry); the
    stored image is upright, so the box turns with it."""
    root = tmp_path / "coco"
    root.mkdir()
    raw = np.zeros((40, 60, 3), np.uint8)  # stored 60x40: a red block at x 5..20, y 10..30, the rest black
    raw[10:30, 5:20] = (220, 20, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: 40x60
    Image.fromarray(raw).save(root / "1.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(raw).save(root / "2.jpg", quality=95)
    images = [{"id": 1, "file_name": "1.jpg", "width": 60, "height": 40},
              {"id": 2, "file_name": "2.jpg", "width": 60, "height": 40}]
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": [
        {"id": 1, "image_id": 1, "caption": "A red block."}, {"id": 2, "image_id": 2, "caption": "A red block too."}]}))
    (root / "instances.json").write_text(json.dumps({"images": images, "categories": [{"id": 3, "name": "block"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 10, 15, 20]},
                        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [5, 10, 15, 20]}]}))
    data = tmp_path / "data"
    r = cli(["ingest", root / "captions.json", root / "instances.json", "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    rows = {i["source_id"]: i for i in items(data)}
    assert rows["2"]["boxes"] == [{"label": "block", "bbox": [5.0, 10.0, 15.0, 20.0]}]
    rot = rows["1"]
    assert (rot["width"], rot["height"]) == (40, 60) and rot["objects"] == ["block"]
    [box] = rot["boxes"]
    x, y, w, h = box["bbox"]
    assert (x, y, w, h) == (10.0, 5.0, 20.0, 15.0)
    px = np.asarray(decode_rgb(rot["image"]["bytes"])).astype(int)
    inside = px[int(y) + 2 : int(y + h) - 2, int(x) + 2 : int(x + w) - 2]
    assert inside[..., 0].min() > 150 and inside[..., 1].max() < 90  # the box holds the red block
    assert px[:, : int(x) - 2, 0].max() < 60  # and nothing red left of it


def test_multi_image_items_end_to_end(cli, sample_dir, tmp_path):
    """LLaVA-interleave / MIA-DPO records with several images: items with extra_images, text pairs through
    filter and export (TRL `images` lists), train's reader; distort distorts every image of the item (issue 15:
    it used to fail such rows as multi_image; tests/test_multi_image.py takes them on to sample and train)."""
    recs = [{"id": "pair", "image": ["images/astronaut.png", "images/rocket.jpg"],
             "conversations": turn("<image>\nWhat do the two pictures have in common?",
                                   "Both pictures show space travel: an astronaut in a white suit and a rocket."),
             "rejected_conversations": turn("x", "Both pictures show space travel: an astronaut in a red suit and a "
                                                 "rocket.")},
            {"id": "one", "image": "images/horse.png", "conversations": turn("What animal?", "A brown horse in a field."),
             "rejected_conversations": turn("x", "A black horse in a field.")}]
    ann = tmp_path / "interleave.json"
    ann.write_text(json.dumps(recs))
    data = tmp_path / "data"
    assert cli(["ingest", ann, "--image-root", sample_dir, "-o", data, "--workers", "1"]).exit_code == 0
    multi = next(i for i in items(data) if i["source_id"] == "pair")
    assert multi["prompt"] == "What do the two pictures have in common?"
    assert [im["path"] for im in [multi["image"]] + multi["extra_images"]] == ["images/astronaut.png", "images/rocket.jpg"]

    r = cli(["distort", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    from conftest import materialised

    distorted = materialised(data)
    assert sorted(len(d["extra_images"] or []) for d in distorted) == [0, 1]
    r = cli(["filter", data, "--no-hallucination-check"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "trl"
    assert cli(["export", data, "-o", out, "--format", "trl"]).exit_code == 0
    rows = {r["source_id"]: r for f in out.glob("*.parquet") for r in pq.read_table(f).to_pylist()}
    assert [im["bytes"] for im in rows["pair"]["images"]] == [image_bytes("images/astronaut.png"),
                                                              image_bytes("images/rocket.jpg")]
    assert [p["type"] for p in rows["pair"]["prompt"][0]["content"]] == ["image", "image", "text"]
    assert len(rows["one"]["images"]) == 1

    from povid_cli.train.data import read_pairs

    by_n = sorted(len(p["images"]) for p in read_pairs(str(data)))
    assert by_n == [1, 2]
    r = cli(["export", data, "-o", tmp_path / "pv", "--format", "povid"])
    assert r.exit_code == 0
    pv = {x["source_id"]: x for x in json.loads((tmp_path / "pv/povid.json").read_text())}
    assert len(pv["pair"]["image"]) == 2 and pv["pair"]["conversations"][0]["value"].startswith("<image>\n<image>\n")


def test_stage_parquet_files_decode_as_images_with_datasets(cli, sample_data):
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_dir=str(sample_data / "items"), split="train")
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds.features["extra_images"], datasets.List)
    assert ds[0]["image"].mode == "RGB" and ds[0]["image"].size[0] > 0


def test_an_older_dataset_is_read_but_not_ingested_into(cli, sample_dir, tmp_path):
    """A format-1 dataset (item ids from image + prompt, the given answer in items.rejected): ingest says so
    in one line and changes nothing; status, filter, export and train still read it."""
    from povid_cli.core.schemas import IMAGE

    data = tmp_path / "old"
    ds = Dataset.open_or_create(str(data))
    ds.manifest["format_version"] = 1
    ds.save_manifest()
    old_items = pa.schema([("id", pa.string()), ("image", IMAGE), ("image_sha256", pa.string()), ("width", pa.int32()),
                           ("height", pa.int32()), ("prompt", pa.string()), ("chosen", pa.string()),
                           ("has_answer", pa.bool_()), ("rejected", pa.string()), ("task", pa.string()),
                           ("objects", pa.list_(pa.string())), ("source", pa.string()), ("source_id", pa.string()),
                           ("turn", pa.int32())])
    chosen = "A brown horse stands in a green field."
    row = {"id": "0123456789abcdef", "image": {"bytes": image_bytes("images/horse.png"), "path": "horse.png"},
           "image_sha256": "x", "width": 1, "height": 1, "prompt": "Describe this image in detail.", "chosen": chosen,
           "has_answer": True, "rejected": "A black horse stands in a green field.", "task": "caption", "objects": None,
           "source": "/abs/old.json", "source_id": "h", "turn": 0}
    ds.write_shard("items", 0, pa.Table.from_pylist([row], schema=old_items), "k")
    ds.stage_record("ingest")["shards"] = {"00000": {"rows": {"items": 1}, "failed": 0}}  # as format 1 recorded it
    ds.save_manifest()
    r = cli(["ingest", sample_dir / "llava.json", "-o", data])
    assert r.exit_code == 1 and "made by an older povid (dataset format 1" in r.output
    assert "Ingest into a new folder" in r.output and len(r.output.strip().splitlines()) == 1
    assert cli(["status", data]).exit_code == 0
    assert exported_pairs(cli, data, tmp_path / "before") == [("Describe this image in detail.", chosen,
                                                                "A black horse stands in a green field.")]
    assert cli(["filter", data]).exit_code == 0
    from povid_cli.train.data import read_pairs

    [p] = read_pairs(str(data))
    assert p["rejected"][0]["content"] == "A black horse stands in a green field." and len(p["images"]) == 1


def test_synth_image_root_sets_the_ingest_option(tmp_path):
    from povid_cli.synth.plan import resolve

    plan = resolve({}, [str(tmp_path / "a.json")], {"image_root": "/data/coco"})
    assert plan.ingest.image_root == "/data/coco"
    plan = resolve({"ingest": {"image_root": "/from/toml"}}, [str(tmp_path / "a.json")], {})
    assert plan.ingest.image_root == "/from/toml"


def test_status_counts_given_pairs_and_sources(cli, sample_dir, tmp_path):
    recs = json.loads((sample_dir / "llava.json").read_text())[:2]
    for rec in recs:
        rec["rejected_conversations"] = [rec["conversations"][0], {"from": "gpt", "value": "Nothing at all."}]
    (tmp_path / "a.json").write_text(json.dumps(recs))
    data = tmp_path / "data"
    assert cli(["ingest", tmp_path / "a.json", sample_dir / "llava.json", "--image-root", sample_dir, "-o", data,
                "--workers", "1"]).exit_code == 0
    acc = accounting(cli, data)
    assert (acc["records"], acc["items"], acc["new"], acc["given_pairs"], acc["sources"]) == (24, 24, 22, 2, 2)
    r = cli(["status", data, "--json"])
    [ing] = [s for s in json.loads(r.stdout)["stages"] if s["stage"] == "ingest"]
    assert ing["rows_out"] == {"items": 22, "given": 2} and ing["rows_in"] == 24


def _povid_file(path, recs, rejected: str) -> None:
    path.write_text(json.dumps([{**r, "rejected_conversations": [r["conversations"][0], {"from": "gpt", "value": rejected}]}
                                for r in recs]))


def test_given_pairs_arriving_later_join_their_items_and_rerun_filter_only(cli, sample_dir, tmp_path):
    """A second source (or a later cron run) with more rejected answers for items already in DATA: they are
    added to those items' shard of `given`; items stay as they are, and only filter runs again."""
    recs = json.loads((sample_dir / "llava.json").read_text())[:4]
    _povid_file(tmp_path / "a.json", recs, "There is a red fork on the table.")
    _povid_file(tmp_path / "b.json", recs, "There is a green spoon on the table.")
    data = tmp_path / "data"
    assert cli(["ingest", tmp_path / "a.json", "--image-root", sample_dir, "-o", data, "--workers", "1"]).exit_code == 0
    items_key = Dataset.open(str(data)).shard_key("items", 0)
    assert cli(["filter", data, "--no-hallucination-check", "--min-similarity", "0"]).exit_code == 0
    r = cli(["ingest", tmp_path / "b.json", "--image-root", sample_dir, "-o", data, "--workers", "1"])
    assert r.exit_code == 0 and "0 new items, 4 already present; 4 given pairs (4 new)" in r.output, r.output
    ds = Dataset.open(str(data))
    assert ds.shard_key("items", 0) == items_key and ds.read_all("given").num_rows == 8
    r = cli(["filter", data, "--no-hallucination-check", "--min-similarity", "0"])
    assert r.exit_code == 0 and "1 shard(s) run" in r.output, r.output
    got = Dataset.open(str(data)).read_all("pairs").to_pylist() + Dataset.open(str(data)).read_all("dropped").to_pylist()
    assert sorted(p["rejected_source"] for p in got) == ["input"] * 8
    assert {p["source"] for p in got} == {"a.json", "b.json"}
    r = cli(["ingest", tmp_path / "b.json", "--image-root", sample_dir, "-o", data, "--workers", "1"])
    assert "4 given pairs (0 new)" in r.output


def test_a_shard_split_into_parts_keeps_every_given_pair(cli, sample_dir, tmp_path, monkeypatch):
    from povid_cli.ingest import job

    monkeypatch.setattr(job, "MIN_PART", 2)  # the driver cuts the one shard into row ranges (parts)
    recs = json.loads((sample_dir / "llava.json").read_text())
    src = []
    for j in range(2):
        src += [{**r, "rejected_conversations": [r["conversations"][0], {"from": "gpt", "value": f"A fork {j}."}]}
                for r in recs]
    (tmp_path / "p.json").write_text(json.dumps(src))
    data = tmp_path / "data"
    r = cli(["ingest", tmp_path / "p.json", "--image-root", sample_dir, "-o", data, "--workers", "2"])
    assert r.exit_code == 0 and "44 records -> 22 new items, 22 already present; 44 given pairs (44 new)" in r.output
    ds = Dataset.open(str(data))
    assert ds.shard_ids("items") == [0] == ds.shard_ids("given") and ds.read_all("given").num_rows == 44
    assert not (data / ".parts").exists() or not any((data / ".parts").rglob("*.arrow"))


def test_an_image_folder_is_its_own_root_whatever_image_root_says(cli, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos/a.png").write_bytes(png())
    (tmp_path / "ann.json").write_text(json.dumps([{"id": "t", "image": "", "conversations": turn("2 + 2?", "4.")}]))
    r = cli(["ingest", tmp_path / "photos", tmp_path / "ann.json", "--image-root", tmp_path / "elsewhere", "-o",
             tmp_path / "data", "--workers", "1"])
    assert r.exit_code == 0, r.output  # an empty `image` is a text-only record, skipped
    assert [i["source"] for i in items(tmp_path / "data")] == ["a.png"] and "1 skipped (1 text_only)" in r.output
