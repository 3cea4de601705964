"""Contrast pairs (mDPO, V-DPO, CHiP): `filter --kinds ...,contrast` makes them from DATA/distorted, drops the bad
ones with a reason, and `export --format trl` writes their `rejected_images` (povid's extension)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from stages.contrast import rejected_images
from stages.filter import FilterConfig, FilterStage

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample"
HORSE = (SAMPLE / "images" / "horse.png").read_bytes()
CHELSEA = (SAMPLE / "images" / "chelsea.png").read_bytes()
LN = "local_noise:pad=0"  # the variant name of -m local-noise:pad=0
NOOP = "color_jitter:brightness=0,contrast=0,saturation=0,hue=0"
BIG = [{"label": "horse", "bbox": [60.0, 40.0, 250.0, 200.0]}]


def read(data, output):
    return pq.read_table(data / output).to_pylist()


@pytest.fixture
def contrast_data(make_items, cli):
    """Four items, distorted with diffusion, next to nothing (diffusion at t=0: +-2 levels), nothing (colour jitter
    of strength 0) and local noise."""
    data = make_items([
        {"image_bytes": HORSE, "prompt": "What animal is this?", "chosen": "A brown horse in a field.", "boxes": BIG},
        {"image_bytes": HORSE, "prompt": "Is the horse small?", "chosen": "Yes.",
         "boxes": [{"label": "horse", "bbox": [10.0, 10.0, 4.0, 4.0]}]},  # a tiny box: a weak contrast
        {"image_bytes": CHELSEA, "prompt": "Describe it.", "chosen": "A tabby cat looks at the camera.",
         "boxes": [{"label": "dog", "bbox": [20.0, 20.0, 200.0, 200.0]}]},  # noise on an object it does not name
        {"image_bytes": CHELSEA, "prompt": "Any text?", "chosen": ""},  # no answer to prefer
    ])
    r = cli(["distort", data, "-m", "diffusion", "-m", "diffusion:t=0", "-m", NOOP, "-m", "local-noise:pad=0", "--size", "0",
             "-w", "1"])
    assert r.exit_code == 1 and "no_boxes" in str(read(data, "failed/distort"))  # the item without boxes
    return data


def test_filter_makes_contrast_pairs_with_reasons_and_scores(contrast_data, cli):
    r = cli(["filter", contrast_data, "--kinds", "contrast"])
    assert r.exit_code == 0, r.output
    pairs, dropped = read(contrast_data, "pairs"), read(contrast_data, "dropped")
    assert {p["kind"] for p in pairs} == {"contrast"}
    by = {(p["chosen"], p["variant"]): p for p in pairs}
    horse = by[("A brown horse in a field.", "diffusion")]
    assert horse["rejected"] == horse["chosen"] and horse["rejected_source"] == "distorted"
    # (the clean image is the item's: where pairs store it is the storage's business; the export test reads it)
    # the rejected image is a reference to the distorted row (its recipe): export and train rebuild the pixels
    assert horse["rejected_image"] is None
    distorted = {d["id"]: d for d in read(contrast_data, "distorted")}
    items = {i["id"]: i for i in read(contrast_data, "items")}
    rebuilt = rejected_images(items[horse["item_id"]], distorted[horse["rejected_id"]])
    assert rebuilt[0]["bytes"][:4] == b"\x89PNG"
    assert horse["changed_area"] > 0.9 and 0.05 < horse["image_diff"] < 0.5
    assert ("A brown horse in a field.", LN) in by  # the answer names the noised horse
    assert 0.3 < by[("A brown horse in a field.", LN)]["changed_area"] < 0.6
    reasons = {(d["chosen"], d["variant"]): d["drop_reason"] for d in dropped}
    assert reasons[("A brown horse in a field.", NOOP)] == "identical_image"
    assert reasons[("A brown horse in a field.", "diffusion:t=0")] == "weak_contrast"  # no pixel moves > 8 levels
    assert reasons[("Yes.", LN)] == "weak_contrast"  # 16 pixels of 131,200
    assert reasons[("A tabby cat looks at the camera.", LN)] == "region_unmentioned"
    assert reasons[("", "diffusion")] == "no_chosen"
    assert all(d["rejected_image"] is None and d["image"] is None for d in dropped)  # images are not copied there
    # the same answer under two variants, and "Yes." on several items, are not duplicates
    assert ("Yes.", "diffusion") in by and "duplicate" not in reasons.values()
    assert "identical_image" in r.output and "region_unmentioned" in r.output

    # the checks can be relaxed; default kinds leave contrast pairs out and keep the old config hash
    r = cli(["filter", contrast_data, "--kinds", "contrast", "--min-image-change", "0", "--keep-unmentioned-region"])
    assert r.exit_code == 0
    kept = {(p["chosen"], p["variant"]) for p in read(contrast_data, "pairs")}
    assert {("Yes.", LN), ("A tabby cat looks at the camera.", LN)} <= kept
    # the default kinds make no contrast pairs: with nothing but distorted images there is nothing to filter
    r = cli(["filter", contrast_data, "--no-hallucination-check"])
    assert r.exit_code == 2 and "has nothing to filter yet" in r.output


def test_kinds_option_hashes_only_when_not_the_default():
    base = FilterStage(FilterConfig()).config_hash()
    assert base == "c803af145a77e4b2"  # the hash before `kinds` existed: earlier datasets are not re-filtered
    assert FilterStage(FilterConfig(kinds=("image", "text"))).config_hash() == base
    assert FilterStage(FilterConfig(min_image_change=0.5)).config_hash() == base  # contrast-only options
    with_contrast = FilterStage(FilterConfig(kinds=("text", "image", "contrast")))
    assert with_contrast.config_hash() != base and "distorted" in with_contrast.optional_reads
    assert FilterStage(FilterConfig(kinds=("text", "image", "contrast"), min_image_change=0.5)).config_hash() != \
        with_contrast.config_hash()
    assert "distorted" not in FilterStage(FilterConfig()).optional_reads  # no image bytes read without contrast


def test_bad_kinds_are_usage_errors(sample_data, cli):
    r = cli(["filter", sample_data, "--kinds", "text,pictures"])
    assert r.exit_code == 2 and "kinds must be one of text, image, contrast, corrected" in r.output


def test_trl_export_has_rejected_images_that_datasets_decodes(contrast_data, cli, tmp_path):
    datasets = pytest.importorskip("datasets")
    cli(["hallucinate", contrast_data, "-w", "1"])  # text pairs too (the item without an answer fails there)
    assert read(contrast_data, "hallucinated")
    assert cli(["filter", contrast_data, "--kinds", "text,image,contrast", "--no-hallucination-check"]).exit_code == 0
    out = tmp_path / "trl"
    r = cli(["export", contrast_data, "-o", out, "--format", "trl"])
    assert r.exit_code == 0, r.output
    ds = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    assert isinstance(ds.features["rejected_images"], datasets.List)
    assert isinstance(ds.features["rejected_images"].feature, datasets.Image)
    kinds = [k for k in ds["kind"]]
    assert "contrast" in kinds and "text" in kinds
    for row in ds:
        if row["kind"] == "contrast":
            [clean], [rej] = row["images"], row["rejected_images"]
            assert clean.size == rej.size and row["chosen"] == row["rejected"]
            a, b = np.asarray(clean.convert("RGB"), float), np.asarray(rej.convert("RGB"), float)
            assert np.abs(a - b).mean() > 5  # the distorted one
        else:
            assert row["rejected_images"] is None
    # --kind contrast exports only them; JSON formats without a rejected image skip them and say so
    r = cli(["export", contrast_data, "-o", tmp_path / "c", "--format", "trl", "--kind", "contrast"])
    assert r.exit_code == 0 and all(k == "contrast" for f in (tmp_path / "c").glob("*.parquet")
                                    for k in pq.read_table(f).column("kind").to_pylist())
    n_contrast = kinds.count("contrast")
    r = cli(["export", contrast_data, "-o", tmp_path / "pv", "--format", "povid"])
    assert r.exit_code == 0 and f"skipped {n_contrast} contrast pair(s): povid has no place" in r.output
    records = json.loads((tmp_path / "pv" / "povid.json").read_text())
    assert len(records) == len(kinds) - n_contrast and all(x["kind"] != "contrast" for x in records)
    # a TRL export without contrast pairs keeps its old columns
    r = cli(["export", contrast_data, "-o", tmp_path / "t", "--format", "trl", "--kind", "text"])
    assert "rejected_images" not in pq.read_schema(next((tmp_path / "t").glob("*.parquet"))).names
