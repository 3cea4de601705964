"""POVID's forward-diffusion noise (stages/diffusion.py) checked against independent float64 arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages import diffusion as D


def test_schedule_matches_the_paper_formula_in_plain_python():
    # Independent: math.exp and a running product in Python floats, not numpy's vectorised path.
    n = 1000
    abar, prod = [], 1.0
    for i in range(n):
        x = -6.0 + 12.0 * i / (n - 1)
        beta = 1.0 / (1.0 + math.exp(-x)) * (0.5e-2 - 1e-5) + 1e-5
        prod *= 1.0 - beta
        abar.append(prod)
    b = D.betas()
    assert b.shape == (1000,) and b[0] == pytest.approx(1e-5 + 4.99e-3 / (1 + math.exp(6)), rel=1e-12)
    assert D.alphas_cumprod()[500] == pytest.approx(abar[500], rel=1e-12)
    assert D.alphas_cumprod()[500] == pytest.approx(0.744799, abs=1e-6)
    np.testing.assert_allclose(D.alphas_cumprod(), abar, rtol=1e-12)
    assert D.coefficients(500) == pytest.approx((math.sqrt(abar[500]), math.sqrt(1 - abar[500])), rel=1e-12)


def test_add_noise_has_the_forward_process_mean_and_variance():
    abar = D.alphas_cumprod()[500]
    x0 = np.full((3, 400, 400), 0.8, np.float32)  # constant image in model space
    xt = D.add_noise(x0, 500, np.random.default_rng(0))
    assert xt.dtype == np.float32 and xt.shape == x0.shape
    # 480k samples: the standard error of the mean is ~0.0007, of the variance ~0.0005.
    assert float(xt.mean()) == pytest.approx(math.sqrt(abar) * 0.8, abs=0.004)
    assert float(xt.var()) == pytest.approx(1 - abar, abs=0.004)
    # With explicit noise it is exactly the formula.
    eps = np.random.default_rng(1).standard_normal(x0.shape).astype(np.float32)
    np.testing.assert_allclose(D.add_noise(x0, 500, eps), math.sqrt(abar) * 0.8 + math.sqrt(1 - abar) * eps, rtol=1e-5, atol=1e-6)
    # t = 0 is almost the identity, t = 999 almost pure noise.
    assert float(np.abs(D.add_noise(x0, 0, eps) - x0).std()) < 0.005
    assert float(D.add_noise(x0, 999, np.random.default_rng(0)).mean()) == pytest.approx(math.sqrt(D.alphas_cumprod()[999]) * 0.8, abs=0.004)


def test_fused_pixel_path_equals_normalise_noise_denormalise():
    pixels = np.random.default_rng(2).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    fused = D.noise_pixels(pixels, 500, np.random.default_rng(7))
    slow = D.to_pixels(D.add_noise(D.to_model_space(pixels), 500, np.random.default_rng(7)))
    assert fused.dtype == np.uint8 and fused.shape == pixels.shape
    assert int(np.abs(fused.astype(int) - slow.astype(int)).max()) <= 1  # only rounding at .5 may differ
    # The round trip through uint8 is lossless up to quantisation.
    assert np.array_equal(D.to_pixels(D.to_model_space(pixels)), pixels)


def test_noise_in_pixel_space_is_clip_std_scaled():
    # Mid-grey image; per channel the pixel noise std is sqrt(1 - abar) * 255 * std_c (before clipping).
    pixels = np.full((300, 300, 3), 128, np.uint8)
    out = D.noise_pixels(pixels, 200, np.random.default_rng(3)).astype(np.float64)
    s = math.sqrt(1 - D.alphas_cumprod()[200])
    for c in range(3):
        assert out[..., c].std() == pytest.approx(s * 255 * D.CLIP_STD[c], rel=0.03)


@pytest.mark.parametrize("t", [-1, 1000, 2.5, True])
def test_bad_steps_are_refused(t):
    with pytest.raises(ValueError, match="0..999"):
        D.coefficients(t)


def test_noise_is_pinned_across_machines_and_versions():
    # Golden values: the per-image seed is sha256-based and the noise is PCG64 float32 normals, so these
    # stay the same on every platform; a change here means existing datasets would not be reproduced.
    from stages.distortions import image_seed
    import hashlib

    assert image_seed(0, "abc") == 6325760536001020463
    pixels = (np.arange(32 * 48 * 3) % 251).astype(np.uint8).reshape(32, 48, 3)
    out = D.noise_pixels(pixels, 500, np.random.default_rng(image_seed(0, "abc")))
    assert hashlib.sha256(out.tobytes()).hexdigest() == "8ecd34c8dff73f801466726b0e082c3947b7b42c90b1ab78484a0d6a495874ab"
