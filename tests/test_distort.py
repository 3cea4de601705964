"""`povid distort`: the sample end to end, determinism across workers, variants, validation, failures."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from stages import diffusion as D
from stages.distort import decode, resize_short_side
from stages.distortions import image_seed, parse_spec, parse_specs

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample"


def read(data, output="distorted"):
    if output == "distorted":  # recipes by default: rebuilt, as sample and export do
        from conftest import materialised

        return materialised(data, pq.read_table(data / output).to_pylist())
    return pq.read_table(data / output).to_pylist()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_sample_distorts_with_povid_noise_end_to_end(sample_data, cli):
    r = cli(["distort", sample_data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "22 distorted" in r.output
    rows = read(sample_data)
    items = {i["id"]: i for i in read(sample_data, "items")}
    assert len(rows) == 22 and {r["item_id"] for r in rows} == set(items)
    a, s = D.coefficients(500)
    for row in rows[:4]:
        assert row["id"] == f"{row['item_id']}-diffusion" and row["variant"] == row["method"] == "diffusion"
        assert json.loads(row["params"]) == {"t": 500}
        assert row["seed"] == image_seed(0, row["item_id"])
        assert row["image"]["bytes"][:8] == b"\x89PNG\r\n\x1a\n"  # lossless
        out = pixels(row["image"]["bytes"]).astype(np.float64)
        clean = resize_short_side(decode(items[row["item_id"]]["image"]["bytes"]), 336).astype(np.float64)
        assert min(out.shape[:2]) == 336 and out.shape == clean.shape
        # x_t in pixels: mean a * p + (1 - a) * 255 * mean_c, std s * 255 * std_c. Checked where the mean is
        # 2.5 std away from 0 and 255, so that clipping (1-2% of all pixels at t=500) cannot bias it.
        mu = a * clean + (1 - a) * 255 * np.array(D.CLIP_MEAN)
        for c in range(3):
            sd = s * 255 * D.CLIP_STD[c]
            far = (mu[..., c] > 2.5 * sd) & (mu[..., c] < 255 - 2.5 * sd)
            assert far.sum() > 10_000
            resid = (out - mu)[..., c][far]
            assert resid.std() == pytest.approx(sd, rel=0.05)
            assert abs(resid.mean()) < 1.0

    # A second run has nothing to do; the manifest records the canonical config.
    r = cli(["distort", sample_data, "--workers", "1"])
    assert r.exit_code == 0 and "1 already done" in r.output
    manifest = json.loads((sample_data / "manifest.json").read_text())
    assert manifest["stages"]["distort"]["config"]["methods"] == ["diffusion"]


def test_same_bytes_with_one_or_two_workers(make_items, cli, tmp_path):
    # 7 items over 3 shards, one of them a real photo; three variants, two of them albumentations.
    photo = (SAMPLE / "images" / "chelsea.png").read_bytes()
    one = make_items([{"prompt": f"p{i}", **({"image_bytes": photo} if i == 3 else {})} for i in range(7)],
                     shard_size=3, path=tmp_path / "one")
    two = tmp_path / "two"
    shutil.copytree(one, two)
    args = ["-m", "diffusion:t=300", "-m", "blur:sigma=2", "-m", "mix", "--size", "64"]
    assert cli(["distort", one, "--workers", "1", *args]).exit_code == 0
    assert cli(["distort", two, "--workers", "2", *args]).exit_code == 0
    rows1 = sorted(read(one), key=lambda r: r["id"])
    rows2 = sorted(read(two), key=lambda r: r["id"])
    assert len(rows1) == 21 and [r["id"] for r in rows1] == [r["id"] for r in rows2]
    for r1, r2 in zip(rows1, rows2):
        assert r1["image"]["bytes"] == r2["image"]["bytes"], r1["id"]
        assert (r1["method"], r1["params"], r1["seed"]) == (r2["method"], r2["params"], r2["seed"])
    # A different dataset seed draws different noise.
    assert cli(["distort", two, "--workers", "1", "--seed", "1", *args]).exit_code == 0
    rows3 = {r["id"]: r for r in read(two)}
    assert all(rows3[r["id"]]["image"]["bytes"] != r["image"]["bytes"] for r in rows1 if r["variant"].startswith("diffusion"))


def test_several_methods_give_several_variants_per_item(make_items, cli):
    data = make_items([{"prompt": f"p{i}"} for i in range(3)])
    r = cli(["distort", data, "-m", "diffusion:t=800", "-m", "blur:sigma=3.0", "-m", "grayscale", "-m", "mix:methods=jpeg+dropout",
             "--size", "0", "-w", "1"])
    assert r.exit_code == 0, r.output
    rows = read(data)
    assert len(rows) == 12
    by_variant = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
        assert row["id"] == f"{row['item_id']}-{row['variant']}"
        assert pixels(row["image"]["bytes"]).shape == (48, 64, 3)  # --size 0 keeps 64x48
    assert set(by_variant) == {"diffusion:t=800", "blur:sigma=3", "grayscale", "mix:methods=jpeg+dropout"}
    assert json.loads(by_variant["blur:sigma=3"][0]["params"]) == {"sigma": 3.0}
    gray = pixels(by_variant["grayscale"][0]["image"]["bytes"]).astype(int)
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 1
    assert {r["method"] for r in by_variant["mix:methods=jpeg+dropout"]} <= {"jpeg", "dropout"}
    # Variants of one item share the item's seed (t=200 vs t=800 differ only by t).
    assert len({r["seed"] for r in rows if r["item_id"] == rows[0]["item_id"]}) == 1


@pytest.mark.parametrize("args, message", [
    (["-m", "sharpen"], "unknown distortion method 'sharpen'"),
    (["-m", "blur:radius=3"], "unknown parameter 'radius' for --method blur; valid: sigma"),
    (["-m", "diffusion:t=1000"], "t must be <= 999"),
    (["-m", "diffusion:t=half"], "t must be an integer"),
    (["-m", "motion_blur:kernel=4"], "kernel must be odd"),
    (["-m", "dropout:fill=grey"], "fill must be one of black, random"),
    (["-m", "mix:methods=blur+sharpen"], "unknown: sharpen"),
    (["-m", "diffusion", "-m", "diffusion:t=500"], "are the same variant (diffusion)"),
    (["-m", "diffusion:t=3,t=4"], "parameter 't' given twice"),
    (["-m", "blur:sigma"], "parameter 'sigma' needs a value (k=v)"),
    (["--format", "webp"], "--format must be one of png, jpeg"),
])
def test_bad_methods_are_one_line_usage_errors(sample_data, cli, args, message):
    r = cli(["distort", sample_data, *args])
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output
    if "unknown distortion method" in message:
        assert "diffusion, blur, motion_blur, jpeg, downscale, dropout, color_jitter, grayscale, elastic, mix" in r.output
    assert not (sample_data / "distorted").exists()


def test_spec_parsing_is_canonical():
    assert parse_spec("Blur:sigma=4.0").variant == "blur"  # the default value is not part of the name
    assert parse_spec("blur:sigma=2.50").variant == "blur:sigma=2.5"
    assert parse_spec(" dropout : holes=3, fill=random").params_dict() == {"holes": 3, "size": 0.2, "fill": "random"}
    assert parse_spec("motion-blur:kernel=9").variant == "motion_blur:kernel=9"
    assert [s.variant for s in parse_specs(["diffusion", "diffusion:t=200"])] == ["diffusion", "diffusion:t=200"]


def test_bad_images_go_to_failed_not_a_crash(make_items, cli):
    jpeg = (SAMPLE / "images" / "hubble.jpg").read_bytes()
    data = make_items([{"prompt": "fine"}, {"prompt": "garbage", "image_bytes": b"garbage"},
                       {"prompt": "truncated", "image_bytes": jpeg[: len(jpeg) // 2]}, {"prompt": "fine too"}])
    r = cli(["distort", data, "-m", "diffusion", "-m", "jpeg", "-w", "1"])
    assert r.exit_code == 1, r.output
    assert "2 failed" in r.output and "failed/distort" in r.output
    items = {i["source_id"]: i["id"] for i in read(data, "items")}
    failed = read(data, "failed/distort")
    assert {f["id"] for f in failed} == {items["1"], items["2"]}
    assert all(f["kind"] == "bad_image" and f["stage"] == "distort" and "cannot decode" in f["error"] for f in failed)
    assert {r["item_id"] for r in read(data)} == {items["0"], items["3"]} and len(read(data)) == 4


def test_list_methods_and_help_teach_the_catalogue(cli):
    r = cli(["distort", "--list-methods"])
    assert r.exit_code == 0
    assert "diffusion: POVID" in r.output and "t=500 (int >=0,<=999)" in r.output and "sigma=4.0" in r.output
    r = cli(["distort", "--help"])
    assert r.exit_code == 0 and "--method" in r.output and "motion_blur" in r.output


def test_jpeg_storage_option(make_items, cli):
    data = make_items([{"prompt": "a"}])
    assert cli(["distort", data, "--format", "jpeg", "--size", "96", "-w", "1"]).exit_code == 0
    row = read(data)[0]
    assert row["image"]["bytes"][:3] == b"\xff\xd8\xff" and row["image"]["path"].endswith(".jpg")
    assert pixels(row["image"]["bytes"]).shape == (96, 128, 3)


def test_side_by_side_png_of_original_and_distorted(sample_data, cli, tmp_path):
    from povid_cli.report.sidebyside import side_by_side_for_item

    assert cli(["distort", sample_data, "-m", "diffusion", "-m", "blur", "--limit", "2", "-w", "1"]).exit_code == 0
    item_id = read(sample_data)[0]["item_id"]
    out = tmp_path / "docs" / "pair.png"
    data = side_by_side_for_item(str(sample_data), item_id, out=out)
    assert out.read_bytes() == data and data[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(out)
    assert im.height > 336 and im.width > 3 * 336  # original + 2 variants at the distorted height


def test_equivalent_configs_share_one_config_hash():
    from stages.distort import DistortConfig, DistortStage

    a = DistortStage(DistortConfig(methods=("diffusion:t=500", "blur:sigma=4.0"), quality=80))
    b = DistortStage(DistortConfig(methods=["diffusion", "blur"]))
    assert a.config.methods == ("diffusion", "blur") and a.config_hash() == b.config_hash()
    assert DistortStage(DistortConfig(methods="diffusion:t=200")).config.methods == ("diffusion:t=200",)
    assert DistortStage(DistortConfig(seed=1)).config_hash() != b.config_hash()


def test_square_gives_exactly_the_llava_input(make_items, cli):
    data = make_items([{"prompt": "a"}])  # a 64x48 image
    assert cli(["distort", data, "--square", "-w", "1"]).exit_code == 0
    row = read(data)[0]
    out = pixels(row["image"]["bytes"]).astype(np.float64)
    assert out.shape == (336, 336, 3)
    # The top band is LLaVA's padding (CLIP mean colour, x_0 ~ 0 in model space): there x_t is pure noise
    # around the mean colour, with CLIP-std-scaled spread.
    _, s = D.coefficients(500)
    band = out[:30]
    for c in range(3):
        assert band[..., c].mean() == pytest.approx(255 * D.CLIP_MEAN[c], abs=2.0)
        assert band[..., c].std() == pytest.approx(s * 255 * D.CLIP_STD[c], rel=0.08)


def test_a_failing_variant_does_not_lose_the_others(make_items, cli):
    # A 3x2 image kept at its size: downscale by 0.15 has no pixel left and fails; diffusion works.
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (200, 30, 30)).save(buf, format="PNG")
    data = make_items([{"prompt": "tiny", "image_bytes": buf.getvalue()}])
    r = cli(["distort", data, "--size", "0", "-m", "diffusion", "-m", "downscale", "-w", "1"])
    assert r.exit_code == 1
    (row,) = read(data)
    (failed,) = read(data, "failed/distort")
    assert row["variant"] == "diffusion" and pixels(row["image"]["bytes"]).shape == (2, 3, 3)
    assert failed["id"] == f"{row['item_id']}-downscale" and failed["error"].startswith("downscale:")
    assert json.loads(failed["detail"]) == {"item_id": row["item_id"], "variant": "downscale"}
