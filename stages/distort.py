"""`distort`: items -> distorted images, one row per (item, --method variant).

Input columns (items): id, image, extra_images, boxes (for `local_noise`).
Output columns (schemas.DISTORTED): id = f"{item_id}-{variant}", item_id, variant (canonical method
spec, e.g. "diffusion" or "blur:sigma=3"), image (struct bytes/path), method (the method applied; for
`mix` the one it picked), params (JSON of that method's parameters), seed (the per-image seed of the first
distorted image), extra_images and image_indices (multi-image items, below).

Multi-image items (MIA-DPO, LLaVA-interleave): every image is distorted (each with its own seed) into one
row: `image` is the first distorted image, `extra_images` the others, `image_indices` null. With
`image_index=I` only the item's image I is distorted: `image` is that one and `image_indices` = [I] (the
other images stay the item's clean ones: schemas.variant_images); items with I images or fewer are failed rows
of kind `no_image`. `local_noise` noises inside the object boxes, which belong to the first image: items without
boxes are failed rows of kind `no_boxes` (not retryable: nothing to noise), and on a multi-image item only the
first image is noised (`image_indices` = [0]). The boxes follow the pad and resize below.

Per image: decode -> [pad to a square, `square`] -> resize so the short side is `size` (POVID noises the
image at the model's input resolution: 336 px for LLaVA-1.5; 0 keeps the original size) -> each method
-> encode. With `square=True` the stored image is exactly LLaVA-1.5's input (its processor pads to a
square of the CLIP mean colour, then resizes to 336x336), so the model sees x_t itself rather than x_t
resampled by its processor (a 0.75x resize of a 4:3 image would average the noise down).

Determinism: the seed of an image is sha256(dataset seed, item id) (distortions.image_seed), every
method draws only from generators seeded with it, and decoding, resizing and encoding are fixed
functions of the bytes, so a row's bytes do not depend on the number of workers, the batch it fell in,
or what ran before it in the process, and are the same on any machine with the same numpy, OpenCV and
albumentations versions (tests/test_distort_diffusion.py pins the diffusion pixels with a hash).

Storage: lossless PNG by default. Noise is incompressible, so a PNG at 336x448 is ~440 KB (the raw size)
against ~135 KB for JPEG q95; but JPEG's 4:2:0 chroma subsampling and quantisation remove most of the
noise they are asked to keep (RMS error 27 pixel levels against a noise std of 34 at t=500; 4 levels
with 4:4:4). PNG keeps x_t exactly, so what the sampler's VLM sees is what the formula says. The PNG
writer (`png_bytes`) stores noise-dominated images (diffusion with sqrt(1 - abar_t) >= 0.4, i.e. t >= 443)
in uncompressed deflate blocks: zlib would save < 5% there for 20x the time. Everything else gets the
SUB filter + zlib level 1 (Z_RLE). `format="jpeg"` (q95, 4:4:4) is there for users who prefer a third
of the disk to exact pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import zlib
from dataclasses import dataclass

from povid_cli.core.errors import RowError
from povid_cli.core.options import Options, opt
from povid_cli.core.schemas import DISTORTED, item_images
from povid_cli.core.stage import Batch, Result, Stage, failure
from povid_cli.core.store import digest

from stages import distortions
from stages.regions import follow_boxes, valid_boxes

FORMATS = ("png", "jpeg")
log = logging.getLogger("povid.distort")


@dataclass(frozen=True)
class DistortConfig(Options):
    methods: tuple[str, ...] = opt(("diffusion",), "Distortion NAME[:k=v,...]; repeat for several variants per item "
                                   "(see --list-methods) [default: diffusion (t=500)].", flag="--method", short="-m",
                                   metavar="NAME[:k=v,...]")
    size: int = opt(336, "Resize so the short side is N pixels first (the model's input size: 336 for LLaVA-1.5); "
                    "0 keeps the original size.", min=0)
    square: bool = opt(False, "Pad to a square of the CLIP mean colour first, as LLaVA-1.5's processor does: the "
                       "stored image is then exactly the model's input.")
    seed: int = opt(0, "Dataset seed; each image's seed is hash(seed, item id).")
    format: str = opt("png", "Storage: png (lossless, keeps the noise exact) or jpeg (q=--quality, 4:4:4; a third of "
                      "the size).", choices=FORMATS)
    quality: int = opt(95, "JPEG quality (with --format jpeg).", min=1, max=100)
    store: str = opt("recipe", "recipe: keep how to rebuild each image (method, parameters, seed) and its checksum, "
                     "and rebuild the pixels where they are used (sample, report, export); pixels: store the images "
                     "(a noised 336 px PNG is ~450 KB: 7x a typical source JPEG).", choices=("recipe", "pixels"),
                     hash=False)
    # hash=False: config_hash adds it only when set, so datasets distorted before this option keep their hash
    image_index: int | None = opt(None, "Multi-image items: distort only image N (0 = the first) [default: every "
                                  "image]; items with N images or fewer are failed rows (no_image).", min=0,
                                  hash=False, metavar="N")


def validate(config: DistortConfig) -> tuple[distortions.Spec, ...]:
    """The config's method specs resolved; UsageError for anything wrong."""
    methods = (config.methods,) if isinstance(config.methods, str) else tuple(config.methods)
    return distortions.parse_specs(methods)


def canonical(config: DistortConfig) -> DistortConfig:
    """The same config with canonical method specs (so 'blur:sigma=4.0' and 'blur' hash the same)."""
    from dataclasses import replace

    specs = validate(config)
    # quality only matters for jpeg: leave it out of the config hash otherwise.
    quality = config.quality if config.format == "jpeg" else DistortConfig.quality
    return replace(config, methods=tuple(s.variant for s in specs), quality=quality)


# -- image i/o (cv2: faster than PIL for decode, resize and PNG encode; both use libjpeg-turbo/zlib) --------
def decode(data: bytes | None):
    """Stored image bytes -> RGB uint8 HxWx3; RowError for anything that is not a complete image."""
    import cv2
    import numpy as np

    if not data:
        raise RowError("no image bytes", kind="bad_image")
    arr = None
    # libjpeg in cv2 "decodes" a truncated JPEG into a grey-padded image with a warning; PIL refuses it.
    truncated_jpeg = data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if not truncated_jpeg:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None:  # a format cv2 cannot read, or a broken file: PIL decides and explains
        from povid_cli.core.images import open_image, to_rgb

        return np.asarray(to_rgb(open_image(data)), dtype=np.uint8)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def resize_short_side(rgb, size: int):
    """Resize so the short side is `size` (area filter down, bicubic up, like CLIP's bicubic); 0: unchanged."""
    import cv2

    h, w = rgb.shape[:2]
    if size <= 0 or min(h, w) == size:
        return rgb
    scale = size / min(h, w)
    nw, nh = (size, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), size)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(rgb, (nw, nh), interpolation=interp)


def pad_square(rgb):
    """LLaVA-1.5's expand2square: centre the image on a square of the CLIP mean colour (122, 116, 104)."""
    import numpy as np

    from stages.diffusion import CLIP_MEAN

    h, w = rgb.shape[:2]
    if h == w:
        return rgb
    side = max(h, w)
    out = np.empty((side, side, 3), np.uint8)
    out[:] = [int(m * 255) for m in CLIP_MEAN]
    y, x = (side - h) // 2, (side - w) // 2
    out[y : y + h, x : x + w] = rgb
    return out


def png_bytes(rgb, compress: bool = True) -> bytes:
    """RGB uint8 HxWx3 -> PNG bytes, written here with numpy and zlib (no per-pixel Python).

    compress=True: the SUB row filter and zlib level 1 with the Z_RLE strategy (on photos within ~15% of
    libpng's adaptive filters at level 6, 3x faster). compress=False: deflate "stored" blocks, for
    images dominated by noise, where zlib saves < 5% (x_500) for ~4 ms per 336x448 image while stored
    blocks take ~0.2 ms; their bytes also depend on no zlib version.
    """
    import numpy as np

    h, w, c = rgb.shape
    flat = rgb.reshape(h, w * c)
    rows = np.empty((h, w * c + 1), np.uint8)  # each scanline: filter type byte + data
    if compress:
        rows[:, 0] = 1  # SUB: each byte minus the same channel of the pixel to its left (mod 256)
        rows[:, 1 : 1 + c] = flat[:, :c]
        np.subtract(flat[:, c:], flat[:, :-c], out=rows[:, 1 + c :])
        z = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    else:
        rows[:, 0] = 0
        rows[:, 1:] = flat
        z = zlib.compressobj(0)
    idat = z.compress(rows) + z.flush()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encode(rgb, fmt: str = "png", quality: int = 95, compress: bool = True) -> bytes:
    if fmt != "jpeg":
        return png_bytes(rgb, compress)
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:  # pragma: no cover - cv2 encodes any uint8 HxWx3 array
        raise RowError("could not encode the distorted image as JPEG", kind="error")
    return buf.tobytes()


def _file_name(row_id: str, fmt: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in row_id)
    return f"{safe}.{'jpg' if fmt == 'jpeg' else 'png'}"


class DistortStage(Stage):
    """items -> distorted: one distorted image per item and --method variant."""

    name = "distort"
    reads = ("items",)
    writes = ("distorted",)
    schemas = {"distorted": DISTORTED}
    Config = DistortConfig
    # Small batches: one shard splits over every worker, and a failing image costs only its own batch time.
    batch_size = 8

    def __init__(self, config: DistortConfig):
        # Canonical specs in the config: `diffusion:t=500` and `diffusion` are one config hash, whoever
        # builds the stage (`povid distort`, `povid synth`, a povid.toml).
        config = canonical(config)
        super().__init__(config)
        self.specs = validate(config)
        log.info("distort: %s at short side %s, seed %d, %s", ", ".join(s.variant for s in self.specs),
                 config.size or "original", config.seed, config.format)
        if distortions.needs_albumentations(self.specs):
            # Imported here, in the driver too, so that forked workers inherit it instead of each paying for it.
            distortions.import_albumentations()

    def config_hash(self) -> str:
        h = super().config_hash()
        if self.config.image_index is not None:  # a new option: part of the hash only when set
            h = digest(h, "image_index", self.config.image_index)
        return h

    def _prepare(self, data: bytes | None):
        """Decoded, padded and resized image (what the methods distort) and its decoded (h, w)."""
        rgb = decode(data)
        shape = rgb.shape[:2]
        return resize_short_side(pad_square(rgb) if self.config.square else rgb, self.config.size), shape

    def distort_item(self, row: dict) -> tuple[list[dict], list[dict]]:
        """All variants of one item: (rows, failures). Never raises for a bad image."""
        item_id = row["id"]
        detail = json.dumps({"item_id": item_id})
        images = item_images(row) or [None]  # no image at all: a bad_image failure below
        positions = list(range(len(images)))
        if self.config.image_index is not None:
            if self.config.image_index >= len(images):
                return [], [failure(item_id, f"--image-index {self.config.image_index}: this item has {len(images)} "
                                    "image(s)", kind="no_image", detail=detail)]
            positions = [self.config.image_index]
        prepared, shapes = {}, {}
        for p in positions:
            try:
                prepared[p], shapes[p] = self._prepare((images[p] or {}).get("bytes"))
            except RowError as e:
                return [], [failure(item_id, f"cannot decode the image{f' {p}' if p else ''}: {e}", kind=e.kind, detail=detail)]
            except Exception as e:  # noqa: BLE001 - a decoder crash is a bad image, not a crashed run
                return [], [failure(item_id, f"cannot decode the image{f' {p}' if p else ''}: {type(e).__name__}: {e}", kind="bad_image",
                                    detail=detail)]
        # the item's boxes are in the pixels of its first (stored) image: moved as its pixels were
        boxes = follow_boxes(valid_boxes(row.get("boxes")), shapes[0], square=self.config.square,
                             size=self.config.size) if 0 in shapes else []
        seeds = {p: distortions.image_seed(self.config.seed, item_id if p == 0 else f"{item_id}/{p}") for p in positions}
        rows, failed = [], []
        for spec in self.specs:
            row_id = f"{item_id}-{spec.variant}"
            where = json.dumps({"item_id": item_id, "variant": spec.variant})
            # boxes belong to the first image: a box method distorts that one only
            needs_boxes = distortions.METHODS[spec.method].needs_boxes
            todo = [p for p in positions if p == 0] if needs_boxes else positions
            if needs_boxes and not (todo and boxes):
                why = (f"--image-index {self.config.image_index} is another image" if not todo else
                       "this item has none (ingest COCO instances or a `boxes` field)")
                failed.append(failure(row_id, f"{spec.variant}: skipped, {spec.method} needs object boxes of the "
                                      f"item's first image and {why}", kind="no_boxes", detail=where))
                continue
            try:
                datas = []
                for p in todo:
                    out, method, params = distortions.apply(spec, prepared[p], seeds[p], boxes if p == 0 else None)
                    datas.append(encode(out, self.config.format, self.config.quality,
                                        distortions.compressible(method, params)))
            except RowError as e:
                failed.append(failure(row_id, f"{spec.variant}: {e}", kind=e.kind, detail=where))
                continue
            except Exception as e:  # noqa: BLE001 - one variant failing must not lose the others
                failed.append(failure(row_id, f"{spec.variant}: {type(e).__name__}: {e}", kind="error", detail=where))
                continue
            keep = self.config.store == "pixels"
            files = [{"bytes": d if keep else None, "path": _file_name(row_id + (f"-{p}" if p else ""), self.config.format)}
                     for p, d in zip(todo, datas)]
            rows.append({
                "id": row_id, "item_id": item_id, "variant": spec.variant, "image": files[0],
                "method": method, "params": json.dumps(params), "seed": seeds[todo[0]],
                "extra_images": files[1:] or None,
                "image_indices": None if todo == list(range(len(images))) else todo,
                "recipe": self._recipe(spec.variant), "sha256": [hashlib.sha256(d).hexdigest() for d in datas],
            })
        return rows, failed

    def _recipe(self, variant: str) -> str:
        """What rebuilds a row's images from its item (stages/distort_recipe.py)."""
        c = self.config
        return json.dumps({"method": variant, "size": c.size, "square": c.square, "seed": c.seed, "format": c.format,
                           "quality": c.quality, "image_index": c.image_index}, sort_keys=True)

    def process(self, batch: Batch) -> Result:
        result = Result()
        out = result.outputs.setdefault("distorted", [])
        for row in batch.rows:
            rows, failed = self.distort_item(row)
            out.extend(rows)
            result.failed.extend(failed)
        result.usage["images"] = float(len(out))
        log.debug("shard %d: %d items -> %d images, %d failed", batch.shard, len(batch.rows), len(out), len(result.failed))
        return result
