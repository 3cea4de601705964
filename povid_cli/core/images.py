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
        return Normalised(data, w, h, fmt)
    _decode(im)
    exif_rotated = _exif_rotated(im)
    animated = getattr(im, "n_frames", 1) > 1
    if fmt in ("JPEG", "PNG") and im.mode == "RGB" and not exif_rotated and not animated:
        return Normalised(data, im.width, im.height, fmt)
    if exif_rotated:
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001
            pass
    rgb = to_rgb(im)
    buf = io.BytesIO()
    if fmt == "JPEG":
        rgb.save(buf, format="JPEG", quality=95, subsampling=0)
        out_fmt = "JPEG"
    else:
        rgb.save(buf, format="PNG", compress_level=1)
        out_fmt = "PNG"
    return Normalised(buf.getvalue(), rgb.width, rgb.height, out_fmt)


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
