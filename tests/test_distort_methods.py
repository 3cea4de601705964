"""Every distortion in the catalogue is a pure function of (image, parameters, seed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.distort import decode, encode, resize_short_side
from stages.distortions import METHODS, apply, image_seed, parse_spec

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample"

# Methods whose output does not depend on the seed at all.
SEEDLESS = {"blur", "jpeg", "downscale", "grayscale"}
BOXES = [(20.0, 10.0, 60.0, 50.0)]  # (x, y, w, h): what local_noise needs; the other methods ignore it


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return resize_short_side(decode((SAMPLE / "images" / "coffee.png").read_bytes()), 96)


@pytest.mark.parametrize("name", list(METHODS))
def test_method_depends_only_on_image_params_and_seed(photo, name):
    spec = parse_spec(name)
    first, method, params = apply(spec, photo, 11, BOXES)
    assert first.dtype == np.uint8 and first.shape == photo.shape
    assert not np.array_equal(first, photo), "the distortion changed nothing"
    # Other images and seeds in between must not change the result (no hidden generator state).
    for other in METHODS:
        apply(parse_spec(other), photo[::-1].copy(), 5, BOXES)
    again, method2, params2 = apply(spec, photo, 11, BOXES)
    assert np.array_equal(first, again) and (method, params) == (method2, params2)
    assert encode(first) == encode(again)
    different = apply(spec, photo, 12, BOXES)[0]
    if name not in SEEDLESS and method not in SEEDLESS:
        assert not np.array_equal(first, different)


def test_mix_picks_several_methods_across_images(photo):
    picked = {apply(parse_spec("mix"), photo, image_seed(0, f"item{i}"))[1] for i in range(60)}
    assert len(picked) >= 6 and picked <= set(METHODS) - {"mix"}


def test_parameters_change_the_strength(photo):
    def err(spec):
        return float(np.abs(apply(parse_spec(spec), photo, 3)[0].astype(int) - photo).mean())

    assert err("diffusion:t=100") < err("diffusion:t=500") < err("diffusion:t=900")
    assert err("blur:sigma=1") < err("blur:sigma=6")
    assert err("jpeg:quality=60") < err("jpeg:quality=5")
    assert err("dropout:holes=1") < err("dropout:holes=10")


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (50, 301, 3)])
def test_png_writer_round_trips_exactly(shape, compress):
    import io

    import cv2
    from PIL import Image

    from stages.distort import png_bytes

    rgb = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    rgb[: shape[0] // 2] = 200  # a flat part, so that compression has something to do
    data = png_bytes(rgb, compress)
    Image.open(io.BytesIO(data)).verify()  # chunk CRCs and structure
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), rgb)
    if shape[0] > 10:
        assert len(png_bytes(rgb, True)) < len(png_bytes(rgb, False))


def test_noise_dominated_images_are_stored_uncompressed():
    from stages.distortions import compressible

    assert not compressible("diffusion", {"t": 500}) and compressible("diffusion", {"t": 200})
    assert compressible("blur", {"sigma": 4.0})
