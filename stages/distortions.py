"""The catalogue of image distortions that `povid distort --method NAME[:k=v,...]` can apply.

Each method is a function `(rgb uint8 HxWx3, params, seed) -> rgb uint8` with typed, validated
parameters. `diffusion` is POVID's own distortion (stages/diffusion.py, pure numpy); the others are
thin wrappers over albumentations 2.x transforms with fixed strengths (p=1) and a per-image seed, for
users who want other triggers of language-prior hallucinations:

    diffusion     forward-diffusion noise at step t (POVID)
    blur          gaussian blur                     albumentations GaussianBlur
    motion_blur   linear motion blur                albumentations MotionBlur
    jpeg          heavy JPEG compression            albumentations ImageCompression
    downscale     down- then up-sampling            albumentations Downscale
    dropout       random erasing of rectangles      albumentations CoarseDropout
    color_jitter  brightness/contrast/saturation/hue albumentations ColorJitter
    grayscale     colour removed                    albumentations ToGray
    elastic       elastic warping                   albumentations ElasticTransform
    mix           one of the above, chosen per image from the seed
    local_noise   POVID's noise inside the item's object boxes only (MMedPO's local lesion-noising)

A spec is `name` or `name:k=v,k=v`; `parse_spec` resolves it against the declared parameters and
gives the canonical variant name (only the parameters that differ from the defaults, in declared order),
which becomes the `variant` column and the suffix of the row id.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from povid_cli.core.errors import RowError, UsageError

if TYPE_CHECKING:
    import numpy as np

# This module stays importable without numpy/cv2/albumentations (the CLI's --help lists the catalogue);
# the image code imports them when it runs.
NUM_STEPS = 1000  # = stages.diffusion.NUM_STEPS
DEFAULT_T = 500


# -- parameters ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    name: str
    kind: type  # int | float | str
    default: Any
    help: str
    lo: float | None = None  # inclusive bounds unless *_open
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] | None = None
    odd: bool = False

    def parse(self, text: str) -> Any:
        """Parse and check one value given on the command line; ValueError with a reason."""
        if self.kind is str:
            value: Any = text.strip()
        else:
            try:
                value = int(text) if self.kind is int else float(text)
            except ValueError:
                raise ValueError(f"{self.name} must be {'an integer' if self.kind is int else 'a number'}, got {text!r}") from None
            if self.kind is float and not math.isfinite(value):
                raise ValueError(f"{self.name} must be finite, got {text!r}")
        self.check(value)
        return value

    def check(self, value: Any) -> None:
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}; got {value!r}")
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            raise ValueError(f"{self.name} must be {'>' if self.lo_open else '>='} {self.lo:g}, got {value}")
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            raise ValueError(f"{self.name} must be {'<' if self.hi_open else '<='} {self.hi:g}, got {value}")
        if self.odd and value % 2 == 0:
            raise ValueError(f"{self.name} must be odd, got {value}")

    def describe(self) -> str:
        if self.choices:
            rng = "|".join(self.choices)
        else:
            parts = []
            if self.lo is not None:
                parts.append(f"{'>' if self.lo_open else '>='}{self.lo:g}")
            if self.hi is not None:
                parts.append(f"{'<' if self.hi_open else '<='}{self.hi:g}")
            rng = self.kind.__name__ + (" " + ",".join(parts) if parts else "") + (" odd" if self.odd else "")
        return f"{self.name}={self.default} ({rng}): {self.help}"


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    params: tuple[Param, ...]
    apply: Callable[..., np.ndarray]  # (rgb, params, seed) -> rgb; (rgb, params, seed, boxes) with needs_boxes
    needs_boxes: bool = False  # the item's object boxes, in the pixels of `rgb` (stages/regions.py)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}


# -- the methods -----------------------------------------------------------------------------------------
def _diffusion(rgb: np.ndarray, p: dict, seed: int) -> np.ndarray:
    import numpy as np

    from stages import diffusion

    # PCG64 seeded per image; float32 ziggurat normals: fast and identical on every platform.
    return diffusion.noise_pixels(rgb, p["t"], np.random.default_rng(seed))


def _local_noise(rgb: np.ndarray, p: dict, seed: int, boxes: list) -> np.ndarray:
    """`diffusion` inside the padded boxes, the clean pixels everywhere else (byte for byte). The noise is the
    image's own diffusion draw (same seed), so inside the boxes the pixels equal `diffusion`'s at the same t."""

    from stages.regions import box_mask

    mask = box_mask(rgb.shape[:2], boxes, p["pad"])
    if not mask.any():
        raise RowError("local_noise: no object box falls inside the image", kind="no_boxes")
    out = rgb.copy()
    out[mask] = _diffusion(rgb, p, seed)[mask]
    return out


def import_albumentations():
    """`import albumentations`, without its optional torch helpers and without its online version check.

    albumentations 2.x imports `albumentations.pytorch` (hence torch: ~6 s) whenever torch is installed,
    and a process with torch loaded makes the local executor start its workers with spawn instead of
    fork. Hiding torch during the import (only when nothing has imported it yet) keeps it out: the
    distortions use numpy and cv2 only. The update check would try the network at every import.
    """
    import os
    import sys

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if "albumentations" in sys.modules or "torch" in sys.modules:
        import albumentations

        return albumentations
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError meanwhile
    try:
        import albumentations
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return albumentations


def needs_albumentations(specs) -> bool:
    return any(s.method not in ("diffusion", "local_noise") for s in specs)


@functools.lru_cache(maxsize=64)
def _compose(method: str, params_json: str):
    """One albumentations pipeline per (method, params) per process; re-seeded for every image."""
    import cv2

    A = import_albumentations()

    p = json.loads(params_json)
    if method == "blur":
        t = A.GaussianBlur(blur_limit=0, sigma_limit=(p["sigma"], p["sigma"]), p=1.0)  # kernel from sigma
    elif method == "motion_blur":
        t = A.MotionBlur(blur_limit=(p["kernel"], p["kernel"]), allow_shifted=False, p=1.0)
    elif method == "jpeg":
        t = A.ImageCompression(compression_type="jpeg", quality_range=(p["quality"], p["quality"]), p=1.0)
    elif method == "downscale":
        t = A.Downscale(scale_range=(p["scale"], p["scale"]),
                        interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}, p=1.0)
    elif method == "dropout":
        fill = 0 if p["fill"] == "black" else "random"
        t = A.CoarseDropout(num_holes_range=(p["holes"], p["holes"]), hole_height_range=(p["size"], p["size"]),
                            hole_width_range=(p["size"], p["size"]), fill=fill, p=1.0)
    elif method == "color_jitter":
        t = A.ColorJitter(brightness=p["brightness"], contrast=p["contrast"], saturation=p["saturation"],
                          hue=p["hue"], p=1.0)
    elif method == "grayscale":
        t = A.ToGray(num_output_channels=3, method=p["method"], p=1.0)
    elif method == "elastic":
        t = A.ElasticTransform(alpha=p["alpha"], sigma=p["sigma"], border_mode=cv2.BORDER_REFLECT_101, p=1.0)
    else:  # pragma: no cover - guarded by the catalogue
        raise KeyError(method)
    return A.Compose([t], p=1.0, seed=0, strict=True)


def _albumentations(name: str) -> Callable[[np.ndarray, dict, int], np.ndarray]:
    def apply(rgb: np.ndarray, p: dict, seed: int) -> np.ndarray:
        pipeline = _compose(name, json.dumps(p, sort_keys=True))
        # Compose.set_random_seed re-seeds the pipeline's numpy and python generators (and its
        # transforms'), so the result depends on (image, params, seed) only, not on what ran before.
        pipeline.set_random_seed(seed % 2**32)
        out = pipeline(image=rgb)["image"]
        import numpy as np

        return np.ascontiguousarray(out, dtype=np.uint8)

    return apply


def _mix(rgb: np.ndarray, p: dict, seed: int) -> np.ndarray:  # never called: apply() resolves mix first
    raise AssertionError("mix is resolved by apply()")


_P = Param
METHODS: dict[str, Method] = {m.name: m for m in [
    Method("diffusion", "POVID's forward-diffusion noise on the CLIP-normalised image (x_t = sqrt(abar_t) x_0 + sqrt(1-abar_t) eps)",
           (_P("t", int, DEFAULT_T, "diffusion step of the 1000-step sigmoid schedule", lo=0, hi=NUM_STEPS - 1),),
           _diffusion),
    Method("blur", "gaussian blur",
           (_P("sigma", float, 4.0, "standard deviation in pixels", lo=0, lo_open=True, hi=100),),
           _albumentations("blur")),
    Method("motion_blur", "linear motion blur in a random direction",
           (_P("kernel", int, 21, "kernel length in pixels", lo=3, hi=301, odd=True),),
           _albumentations("motion_blur")),
    Method("jpeg", "JPEG compression artefacts",
           (_P("quality", int, 8, "JPEG quality", lo=1, hi=100),),
           _albumentations("jpeg")),
    Method("downscale", "downsample then upsample (loss of detail)",
           (_P("scale", float, 0.15, "downsampling factor", lo=0, lo_open=True, hi=1, hi_open=True),),
           _albumentations("downscale")),
    Method("dropout", "coarse dropout / random erasing of square holes",
           (_P("holes", int, 6, "number of holes", lo=1, hi=100),
            _P("size", float, 0.2, "hole side as a fraction of the image side", lo=0, lo_open=True, hi=1),
            _P("fill", str, "black", "what fills the holes", choices=("black", "random"))),
           _albumentations("dropout")),
    Method("color_jitter", "random brightness, contrast, saturation and hue shifts",
           (_P("brightness", float, 0.5, "factor range 1 +- brightness", lo=0, hi=1),
            _P("contrast", float, 0.5, "factor range 1 +- contrast", lo=0, hi=1),
            _P("saturation", float, 0.5, "factor range 1 +- saturation", lo=0, hi=1),
            _P("hue", float, 0.2, "hue shift range +- hue (fraction of the colour wheel)", lo=0, hi=0.5)),
           _albumentations("color_jitter")),
    Method("grayscale", "colour removed (hallucinated colours are a common failure)",
           (_P("method", str, "weighted_average", "conversion", choices=("weighted_average", "from_lab", "desaturation", "average", "max")),),
           _albumentations("grayscale")),
    Method("elastic", "elastic warping of shapes",
           (_P("alpha", float, 600.0, "displacement scale (x the smoothed unit noise field)", lo=0, lo_open=True, hi=10000),
            _P("sigma", float, 12.0, "gaussian smoothing of the displacement field, in pixels", lo=0, lo_open=True, hi=1000)),
           _albumentations("elastic")),
    Method("mix", "one method per image, chosen from the seed, with that method's defaults",
           (_P("methods", str, "diffusion+blur+motion_blur+jpeg+downscale+dropout+color_jitter+grayscale+elastic",
               "'+'-separated methods to choose from"),),
           _mix),
    Method("local_noise", "POVID's diffusion noise only inside the item's object boxes (MMedPO's local lesion-noising); "
           "items without boxes are failed rows of kind no_boxes",
           (_P("t", int, DEFAULT_T, "diffusion step of the 1000-step sigmoid schedule", lo=0, hi=NUM_STEPS - 1),
            _P("pad", float, 0.1, "grow each box by this fraction of its width / height on every side", lo=0, hi=10)),
           _local_noise, needs_boxes=True),
]}


# -- specs -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """A resolved `--method` value: the method, all its parameters, and its canonical variant name."""

    method: str
    params: tuple[tuple[str, Any], ...]
    variant: str

    def params_dict(self) -> dict:
        return dict(self.params)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _check_mix_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split("+") if n.strip())
    choosable = [n for n, m in METHODS.items() if n != "mix" and not m.needs_boxes]
    bad = [n for n in names if n not in choosable]
    if not names or bad:
        raise ValueError(f"methods must be '+'-separated names from {', '.join(choosable)}"
                         + (f"; unknown: {', '.join(bad)}" if bad else ""))
    return names


def parse_spec(text: str) -> Spec:
    """'blur:sigma=3' -> Spec('blur', (('sigma', 3.0),), 'blur:sigma=3'). UsageError on anything wrong."""
    raw = text.strip()
    name, _, rest = raw.partition(":")
    name = name.strip().lower().replace("-", "_")
    method = METHODS.get(name)
    if method is None:
        raise UsageError(f"unknown distortion method {name!r} in --method {raw!r}; choose from: {', '.join(METHODS)}")
    given: dict[str, Any] = {}
    for item in [s.strip() for s in rest.split(",") if s.strip()]:
        key, eq, value = item.partition("=")
        key = key.strip()
        param = method.param(key)
        if param is None or not eq:
            valid = ", ".join(p.name for p in method.params)
            what = f"unknown parameter {key!r}" if param is None else f"parameter {key!r} needs a value (k=v)"
            raise UsageError(f"{what} for --method {name}; valid: {valid} (e.g. {name}:{method.params[0].name}={method.params[0].default})")
        if key in given:
            raise UsageError(f"--method {raw!r}: parameter {key!r} given twice")
        try:
            given[key] = param.parse(value)
            if name == "mix":
                given[key] = "+".join(_check_mix_list(given[key]))
        except ValueError as e:
            raise UsageError(f"--method {raw!r}: {e}") from None
    resolved = {**method.defaults(), **given}
    changed = [(p.name, resolved[p.name]) for p in method.params if resolved[p.name] != p.default]
    variant = name + (":" + ",".join(f"{k}={_fmt(v)}" for k, v in changed) if changed else "")
    return Spec(name, tuple((p.name, resolved[p.name]) for p in method.params), variant)


def parse_specs(texts: list[str] | tuple[str, ...]) -> tuple[Spec, ...]:
    specs = tuple(parse_spec(t) for t in texts)
    seen: dict[str, str] = {}
    for t, s in zip(texts, specs):
        if s.variant in seen:
            raise UsageError(f"--method {t!r} and --method {seen[s.variant]!r} are the same variant ({s.variant})")
        seen[s.variant] = t
    if not specs:
        raise UsageError("give at least one --method")
    return specs


def image_seed(dataset_seed: int, item_id: str) -> int:
    """The per-image seed: a hash of the dataset seed and the item id (63 bits, fits the int64 column).

    It does not depend on the variant, so `diffusion:t=200` and `diffusion:t=800` of one image share
    their noise draw: variants of one item differ only by the parameters.
    """
    h = hashlib.sha256(f"{dataset_seed}:{item_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def apply(spec: Spec, rgb: np.ndarray, seed: int, boxes: list | None = None) -> tuple[np.ndarray, str, dict]:
    """Distort one image: (distorted rgb, method actually applied, its parameters). `boxes`: (x, y, w, h) in the
    pixels of `rgb`, for the methods that need them (a RowError of kind no_boxes when there are none)."""
    method, params = spec.method, spec.params_dict()
    if method == "mix":
        choices = _check_mix_list(params["methods"])
        # A generator of its own, so the choice does not consume the chosen method's random numbers.
        import numpy as np

        pick = int(np.random.default_rng([seed, 1]).integers(len(choices)))
        method = choices[pick]
        params = METHODS[method].defaults()
    if METHODS[method].needs_boxes:
        if not boxes:
            raise RowError(f"{method} needs the item's object boxes and this item has none (ingest COCO instances "
                           "or a `boxes` field)", kind="no_boxes")
        return METHODS[method].apply(rgb, params, seed, boxes), method, params
    return METHODS[method].apply(rgb, params, seed), method, params


def compressible(method: str, params: dict) -> bool:
    """Whether zlib is worth running on the result: not on images dominated by diffusion noise.

    zlib level 1 saves 20-30% at t=200-300 but 11% at t=400 and 4% at t=500 (sqrt(1 - abar) = 0.33, 0.51).
    """
    if method != "diffusion":  # local_noise: clean outside the boxes, worth compressing
        return True
    from stages.diffusion import coefficients

    return coefficients(params["t"])[1] < 0.4


def describe_methods() -> str:
    """The catalogue as text (for --help and --list-methods)."""
    lines = []
    for m in METHODS.values():
        lines.append(f"{m.name}: {m.help}")
        for p in m.params:
            lines.append(f"    {p.describe()}")
    return "\n".join(lines)
