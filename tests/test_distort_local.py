"""`povid distort -m local-noise`: POVID's noise inside the item's object boxes only (MMedPO), and multi-image
items (every image, or `--image-index`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test_distort import pixels, read

from stages.distort import decode, pad_square, resize_short_side
from stages.regions import box_mask, follow_boxes

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample"
HORSE = (SAMPLE / "images" / "horse.png").read_bytes()  # 400 x 328
ROCKET = (SAMPLE / "images" / "rocket.jpg").read_bytes()
BOXES = [{"label": "horse", "bbox": [60.0, 40.0, 150.0, 120.0]}, {"label": "fence", "bbox": [300.0, 250.0, 60.0, 30.0]}]


def test_local_noise_changes_the_boxes_and_leaves_every_other_pixel_alone(make_items, cli):
    data = make_items([{"image_bytes": HORSE, "boxes": BOXES, "chosen": "A brown horse stands by a fence."}])
    r = cli(["distort", data, "-m", "local-noise", "-m", "diffusion", "--size", "0", "-w", "1"])
    assert r.exit_code == 0, r.output
    rows = {x["variant"]: x for x in read(data)}
    local, full = rows["local_noise"], rows["diffusion"]
    assert local["method"] == "local_noise" and local["image_indices"] is None and local["extra_images"] is None
    clean, out = decode(HORSE), pixels(local["image"]["bytes"])
    assert out.shape == clean.shape
    inside = box_mask(clean.shape[:2], [tuple(b["bbox"]) for b in BOXES], pad=0.1)
    assert np.array_equal(out[~inside], clean[~inside])  # outside the padded boxes: the clean bytes, every pixel
    changed = (out != clean).any(axis=2)[inside].mean()
    assert changed > 0.9, changed  # t=500: almost every pixel inside moves
    # the padding: 10% of each box's size on each side (the horse box: x 45..225, y 28..172)
    assert (out[28:172, 45:225] != clean[28:172, 45:225]).any(axis=2).mean() > 0.9
    assert np.array_equal(out[180:240, 0:40], clean[180:240, 0:40])
    # inside, the noise is the image's own diffusion draw (same seed): the pixels equal `diffusion`'s
    assert np.array_equal(out[inside], pixels(full["image"]["bytes"])[inside])


def test_local_noise_boxes_follow_the_square_pad_and_the_resize(make_items, cli):
    data = make_items([{"image_bytes": HORSE, "boxes": BOXES}])
    r = cli(["distort", data, "-m", "local-noise:pad=0", "--size", "112", "--square", "-w", "1"])
    assert r.exit_code == 0, r.output
    [row] = read(data)
    out = pixels(row["image"]["bytes"])
    moved = resize_short_side(pad_square(decode(HORSE)), 112)  # what distort noises
    assert out.shape == moved.shape == (112, 112, 3)
    boxes = follow_boxes([tuple(b["bbox"]) for b in BOXES], (328, 400), square=True, size=112)
    x, y, w, h = boxes[0]  # the horse box: padded down by 36 px on a 400 px square, scaled by 0.28
    assert (x, y, w, h) == pytest.approx((60 * 0.28, (40 + 36) * 0.28, 150 * 0.28, 120 * 0.28))
    inside = box_mask((112, 112), boxes, pad=0.0)
    assert np.array_equal(out[~inside], moved[~inside])
    assert (out != moved).any(axis=2)[inside].mean() > 0.9


def test_items_without_boxes_are_skipped_as_no_boxes(make_items, cli):
    data = make_items([{"image_bytes": HORSE, "boxes": BOXES, "prompt": "a"}, {"image_bytes": HORSE, "prompt": "b"},
                       {"image_bytes": HORSE, "prompt": "c", "boxes": [{"label": "x", "bbox": [5.0, 5.0, 0.0, 9.0]}]}])
    r = cli(["distort", data, "-m", "local-noise", "-m", "blur", "-w", "1"])
    assert r.exit_code == 1 and "2 failed" in r.output  # the usual failed-row accounting: one per skipped item
    failed = read(data, "failed/distort")
    assert {f["kind"] for f in failed} == {"no_boxes"} and not any(f["retryable"] for f in failed)
    assert all("skipped, local_noise needs object boxes" in f["error"] for f in failed)
    rows = read(data)
    assert sorted(x["variant"] for x in rows) == ["blur", "blur", "blur", "local_noise"]  # blur is not affected


def test_multi_image_items_distort_every_image_or_the_one_asked(make_items, cli):
    extra = [{"bytes": ROCKET, "path": "rocket.jpg"}]
    data = make_items([{"image_bytes": HORSE, "extra_images": extra, "boxes": BOXES, "prompt": "two"},
                       {"image_bytes": HORSE, "prompt": "one"}])
    r = cli(["distort", data, "-m", "diffusion", "-m", "local-noise", "--size", "64", "-w", "1"])
    assert r.exit_code == 1, r.output  # the one-image item has no boxes for local-noise
    rows = {(x["item_id"], x["variant"]): x for x in read(data)}
    items = {i["prompt"]: i["id"] for i in read(data, "items")}
    both = rows[(items["two"], "diffusion")]
    assert both["image_indices"] is None and len(both["extra_images"]) == 1  # every image, in order
    rocket = pixels(both["extra_images"][0]["bytes"])
    assert rocket.shape[0] == 64 and not np.array_equal(rocket, resize_short_side(decode(ROCKET), 64))
    assert rows[(items["two"], "local_noise")]["image_indices"] == [0]  # the boxes are the first image's
    assert rows[(items["two"], "local_noise")]["extra_images"] is None
    assert rows[(items["one"], "diffusion")]["image_indices"] is None

    data2 = make_items([{"image_bytes": HORSE, "extra_images": extra, "prompt": "two"},
                        {"image_bytes": HORSE, "prompt": "one"}], path=data.parent / "d2")
    r = cli(["distort", data2, "--image-index", "1", "--size", "64", "-w", "1"])
    assert r.exit_code == 1 and "1 failed" in r.output
    [row] = read(data2)
    assert row["image_indices"] == [1] and row["extra_images"] is None
    assert pixels(row["image"]["bytes"]).shape[:2] == resize_short_side(decode(ROCKET), 64).shape[:2]
    [f] = read(data2, "failed/distort")
    assert f["kind"] == "no_image" and "--image-index 1: this item has 1 image(s)" in f["error"]


def test_local_noise_in_the_catalogue_and_not_in_mix(cli, sample_data):
    r = cli(["distort", "--list-methods"])
    assert "local_noise: POVID's diffusion noise only inside" in r.output and "pad=0.1" in r.output
    r = cli(["distort", sample_data, "-m", "mix:methods=blur+local_noise"])
    assert r.exit_code == 2 and "unknown: local_noise" in r.output
