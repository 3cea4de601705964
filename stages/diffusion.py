"""POVID's forward-diffusion noise, in numpy (no torch needed).

POVID (arXiv 2402.11411, code derived from VCD's `add_diffusion_noise`) distorts an image with one jump
of a DDPM forward process:

    betas      = sigmoid(linspace(-6, 6, 1000)) * (0.5e-2 - 1e-5) + 1e-5
    abar       = cumprod(1 - betas)
    x_t        = sqrt(abar[t]) * x_0 + sqrt(1 - abar[t]) * eps,   eps ~ N(0, I),  t in 0..999 (default 500)

`t` indexes `abar` from 0, as the original code does (`alphas_bar_sqrt[t]`); abar[500] ~= 0.7448, so
x_500 keeps 86% of the signal and adds noise of standard deviation ~0.505.

Where the noise is applied (pixel mapping)
------------------------------------------
POVID adds the noise to the *model-space* tensor: the CLIP-preprocessed image at the model's input
resolution (LLaVA-1.5: 336 px), i.e. per channel c

    x_0 = (p / 255 - mean_c) / std_c          p: uint8 pixel; CLIP mean/std below

`distort` stores images, not tensors (so any VLM backend, a vLLM server included, can read them), so it
maps back with the exact inverse of that normalisation:

    p_t = round(clip(255 * (std_c * x_t + mean_c), 0, 255))

When a CLIP-style processor later loads p_t it recomputes x_t up to 8-bit quantisation (error <= 0.5/255
per pixel, ~0.008 in model space, against noise of std ~0.5) and clipping to the valid pixel range
(saturated pixels: 1-2% of them at t=500 on typical photos). Both are the price of a storable image and
small next to the noise itself. The CLIP constants are POVID's (LLaVA-1.5, also Qwen2-VL); a model that
normalises otherwise (SigLIP: mean = std = 0.5) sees the same noise scaled by the ratio of the stds. A
processor that resizes again (LLaVA-1.5 pads to a square before its 336 px resize) resamples the noise
with the image; `--size 336` keeps that close to the identity for LLaVA-1.5.

Because the mapping is affine, the whole thing folds into one fused, vectorised float32 expression on
the uint8 pixels (`noise_pixels`):

    p_t = a * p + (1 - a) * 255 * mean_c + sqrt(1 - abar[t]) * 255 * std_c * eps,   a = sqrt(abar[t])

`train --loss povid` uses `add_noise` (or `alphas_cumprod`) on its own normalised tensors.
"""

from __future__ import annotations

import functools

import numpy as np

NUM_STEPS = 1000
DEFAULT_T = 500
BETA_MIN = 1e-5
BETA_MAX = 0.5e-2

# CLIP ViT-L/14-336 (LLaVA-1.5's vision tower) image normalisation, as in its preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def betas(num_steps: int = NUM_STEPS) -> np.ndarray:
    """POVID's sigmoid beta schedule (float64, shape (num_steps,))."""
    x = np.linspace(-6.0, 6.0, num_steps, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-x)) * (BETA_MAX - BETA_MIN) + BETA_MIN


@functools.lru_cache(maxsize=8)
def _abar(num_steps: int) -> np.ndarray:
    a = np.cumprod(1.0 - betas(num_steps))
    a.setflags(write=False)
    return a


def alphas_cumprod(num_steps: int = NUM_STEPS) -> np.ndarray:
    """abar = cumprod(1 - betas) (float64, shape (num_steps,)); abar[t] is the signal kept at step t."""
    return _abar(num_steps).copy()


def check_t(t: int, num_steps: int = NUM_STEPS) -> int:
    if not isinstance(t, (int, np.integer)) or isinstance(t, bool) or not 0 <= t < num_steps:
        raise ValueError(f"t must be an integer step in 0..{num_steps - 1}, got {t!r}")
    return int(t)


def coefficients(t: int, num_steps: int = NUM_STEPS) -> tuple[float, float]:
    """(sqrt(abar_t), sqrt(1 - abar_t)) for step t."""
    ab = float(_abar(num_steps)[check_t(t, num_steps)])
    return float(np.sqrt(ab)), float(np.sqrt(1.0 - ab))


def add_noise(x: np.ndarray, t: int, rng_or_noise=None, num_steps: int = NUM_STEPS) -> np.ndarray:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, on a float array in model space (returns float32).

    rng_or_noise: a numpy Generator (eps drawn as float32 standard normals), an array eps of x's
    shape, an int seed, or None (a fresh, unseeded generator).
    """
    x = np.asarray(x, dtype=np.float32)
    a, s = coefficients(t, num_steps)
    if isinstance(rng_or_noise, np.ndarray):
        eps = np.asarray(rng_or_noise, dtype=np.float32)
        if eps.shape != x.shape:
            raise ValueError(f"noise shape {eps.shape} != image shape {x.shape}")
    else:
        rng = rng_or_noise if isinstance(rng_or_noise, np.random.Generator) else np.random.default_rng(rng_or_noise)
        eps = rng.standard_normal(x.shape, dtype=np.float32)
    out = eps * np.float32(s)
    out += x * np.float32(a)
    return out


def to_model_space(pixels: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """uint8 HxWx3 pixels -> normalised float32 (what a CLIP processor feeds the vision tower, HWC)."""
    m = np.asarray(mean, np.float32)
    sd = np.asarray(std, np.float32)
    return (pixels.astype(np.float32) / np.float32(255.0) - m) / sd


def to_pixels(x: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """The inverse of `to_model_space`, rounded and clipped to uint8."""
    m = np.asarray(mean, np.float32)
    sd = np.asarray(std, np.float32)
    p = (x * sd + m) * np.float32(255.0)
    return np.clip(np.rint(p), 0, 255).astype(np.uint8)


def noise_pixels(pixels: np.ndarray, t: int, rng: np.random.Generator, mean=CLIP_MEAN, std=CLIP_STD,
                 num_steps: int = NUM_STEPS) -> np.ndarray:
    """`to_pixels(add_noise(to_model_space(pixels), t, rng))`, fused into one float32 pass.

    pixels: uint8 HxWx3. Draws the same eps as `add_noise(..., rng)` would (float32 standard normals of
    the image's shape), so the two agree up to float rounding.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != len(mean):
        raise ValueError(f"expected uint8 HxWx{len(mean)} pixels, got {pixels.dtype} {pixels.shape}")
    a, s = coefficients(t, num_steps)
    h, w, c = pixels.shape
    m = np.asarray(mean, np.float64) * 255.0
    sd = np.asarray(std, np.float64) * 255.0
    # Work on (H, W*C) rows with per-channel constants tiled along the row: numpy's inner loops then run
    # over whole rows instead of 3-element pixels (about 2x faster). Written as
    #   a * (eps * s*sd/a + p) + (1 - a) * m + 0.5
    # so that every step is in place on one float32 buffer.
    row_scale = np.tile((s * sd / a).astype(np.float32), w)
    row_offset = np.tile(((1.0 - a) * m + 0.5).astype(np.float32), w)  # +0.5: round half up via the cast
    out = rng.standard_normal((h, w * c), dtype=np.float32)  # the same stream as shape (h, w, c)
    out *= row_scale
    out += pixels.reshape(h, w * c).astype(np.float32)
    out *= np.float32(a)
    out += row_offset
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8).reshape(h, w, c)  # truncating v + 0.5 in [0, 255] == rounding v
