"""Image decoding and normalisation shared by the stages.

`normalise(data)` turns whatever a user's folder holds into what every later stage can rely on:
an RGB image with EXIF orientation applied, stored as bytes. Storage choice: a source that is already
an upright 8-bit RGB JPEG or PNG is kept byte for byte (no generation loss, and cheaper than
re-encoding); an EXIF-rotated or CMYK JPEG is re-encoded as JPEG at quality 95 (it was lossy already);
everything else (grayscale, palette, RGBA composited over white, 16-bit, GIF, WebP, TIFF...) becomes
a lossless PNG.
"""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from povid_cli.core.errors import RowError

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default bomb threshold (~ 9459 x 9459)
MIN_SIDE = 2

# Never let PIL "repair" a broken file silently: a truncated JPEG is a failed row, not a grey stripe.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class Normalised:
    data: bytes
    width: int
    height: int
    format: str  # JPEG | PNG
    orientation: int = 1  # the EXIF orientation that was applied (1: none)
    raw_size: tuple[int, int] | None = None  # (width, height) of the pixels as stored in the source file


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes fully, refusing non-images, truncated files and decompression bombs."""
    im = _open_header(data, max_pixels)
    _decode(im)
    return im


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise RowError("empty file (0 bytes)", kind="bad_image")
    try:
        with warnings.catch_warnings():  # the size is checked right below, against our own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise RowError("not an image (unrecognised format)", kind="bad_image") from None
    except Image.DecompressionBombError as e:
        raise RowError(f"decompression bomb refused: {e}", kind="bad_image") from None
    w, h = im.size
    # Checked on the header, before any pixel is decoded.
    if w * h > max_pixels:
        raise RowError(f"image too large: {w}x{h} = {w * h} pixels > limit {max_pixels} (decompression bomb?)", kind="bad_image")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise RowError(f"image too small: {w}x{h}", kind="bad_image")
    return im


def _decode(im: Image.Image) -> None:
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RowError(f"broken image ({im.format}): {e}", kind="bad_image") from None


def _exif_rotated(im: Image.Image) -> bool:
    try:
        return im.getexif().get(0x0112, 1) not in (1, None)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not fail the image
        return False


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha over white, 16-bit scaled down, CMYK and palettes converted."""
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)  # animated GIF/WebP/APNG: the first frame
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr8 = ((arr - lo) / (hi - lo or 1.0) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def normalise(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Normalised:
    im = _open_header(data, max_pixels)
    fmt = im.format
    if fmt == "JPEG" and im.mode == "RGB" and not _exif_rotated(im):
        # Kept byte for byte, so only proof that the whole stream decodes is needed: libjpeg at 1/8
        # scale still entropy-decodes every block (a truncated file fails the same way) at a
        # fraction of the cost of full-size pixels.
        w, h = im.size
        im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
        _decode(im)
        return Normalised(data, w, h, fmt, 1, (w, h))
    _decode(im)
    exif_rotated = _exif_rotated(im)
    animated = getattr(im, "n_frames", 1) > 1
    raw_size = im.size
    if fmt in ("JPEG", "PNG") and im.mode == "RGB" and not exif_rotated and not animated:
        return Normalised(data, im.width, im.height, fmt, 1, raw_size)
    orientation = 1
    if exif_rotated:
        try:
            orientation = im.getexif().get(0x0112, 1)
            im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001
            orientation = 1
    rgb = to_rgb(im)
    buf = io.BytesIO()
    if fmt == "JPEG":
        rgb.save(buf, format="JPEG", quality=95, subsampling=0)
        out_fmt = "JPEG"
    else:
        rgb.save(buf, format="PNG", compress_level=1)
        out_fmt = "PNG"
    return Normalised(buf.getvalue(), rgb.width, rgb.height, out_fmt, orientation, raw_size)


# Where a point (x, y) of the raw pixels (w x h) lands once EXIF orientation k is applied (PIL's exif_transpose).
_ORIENT = {
    2: lambda x, y, w, h: (w - x, y), 3: lambda x, y, w, h: (w - x, h - y), 4: lambda x, y, w, h: (x, h - y),
    5: lambda x, y, w, h: (y, x), 6: lambda x, y, w, h: (h - y, x), 7: lambda x, y, w, h: (h - y, w - x),
    8: lambda x, y, w, h: (y, w - x),
}


def boxes_to_stored(boxes: list[dict], norm: Normalised, given_size: tuple[int, int] | None) -> list[dict]:
    """Object boxes ({label, bbox: [x, y, w, h]}) moved into the pixels of the stored image.

    `given_size` is the (width, height) the source says the boxes are measured in (COCO's `images`
    entries). Boxes measured on the raw pixels of an EXIF-rotated file are rotated with the image; boxes
    on another size are scaled; without a size the boxes are taken to be on the image as displayed
    (upright), which is what annotation tools show. Boxes are clipped to the image; empty ones are dropped."""
    W, H = norm.width, norm.height
    raw = norm.raw_size or (W, H)
    out = []
    for b in boxes:
        x, y, w, h = (float(v) for v in b["bbox"])
        corners = [(x, y), (x + w, y + h)]
        if given_size and tuple(given_size) != (W, H):
            if norm.orientation in _ORIENT and tuple(given_size) == tuple(raw):
                corners = [_ORIENT[norm.orientation](cx, cy, raw[0], raw[1]) for cx, cy in corners]
            else:
                sx, sy = W / max(1, given_size[0]), H / max(1, given_size[1])
                corners = [(cx * sx, cy * sy) for cx, cy in corners]
        xs = sorted(min(max(c[0], 0.0), W) for c in corners)
        ys = sorted(min(max(c[1], 0.0), H) for c in corners)
        if xs[1] - xs[0] > 0 and ys[1] - ys[0] > 0:
            out.append({"label": b.get("label"), "bbox": [round(xs[0], 2), round(ys[0], 2), round(xs[1] - xs[0], 2),
                                                          round(ys[1] - ys[0], 2)]})
    return out


def decode_rgb(data: bytes) -> Image.Image:
    """Decode stored (already normalised) image bytes as an RGB PIL image."""
    im = Image.open(io.BytesIO(data))
    im.load()
    return im if im.mode == "RGB" else to_rgb(im)


def encode(im: Image.Image, fmt: str = "PNG", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    if fmt.upper() in ("JPG", "JPEG"):
        im.save(buf, format="JPEG", quality=quality)
    else:
        im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mime_type(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def data_url(data: bytes) -> str:
    """An image as a data: URL (for OpenAI-compatible VLM endpoints)."""
    return f"data:{mime_type(data)};base64,{base64.b64encode(data).decode()}"


def extension(data: bytes) -> str:
    return {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}.get(mime_type(data), ".img")
