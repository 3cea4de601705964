"""A side-by-side PNG of an original image and its distorted versions (for docs, tests and `povid report`).

    from povid_cli.report.sidebyside import side_by_side, side_by_side_for_item
    png = side_by_side(original_bytes, [(distorted_bytes, "diffusion")], out="pair.png")
    side_by_side_for_item("data", item_id, out="pair.png")   # reads items + distorted of a dataset

Every panel is scaled to the same height (default: the distorted image's height, so the noise is shown
pixel for pixel) and captioned underneath.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from povid_cli.core.errors import PovidError
from povid_cli.core.images import decode_rgb

CAPTION_H = 22
GAP = 8


def _font(size: int = 14):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable default font
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def side_by_side(original: bytes, distorted: list[tuple[bytes, str]] | bytes, out: str | Path | None = None,
                 height: int | None = None, original_label: str = "original") -> bytes:
    """PNG bytes of [original | distorted...] with captions; also written to `out` when given."""
    if isinstance(distorted, (bytes, bytearray)):
        distorted = [(bytes(distorted), "distorted")]
    panels = [(decode_rgb(original), original_label)] + [(decode_rgb(b), label) for b, label in distorted]
    h = height or (panels[1][0].height if len(panels) > 1 else panels[0][0].height)
    scaled = []
    for im, label in panels:
        w = max(1, round(im.width * h / im.height))
        scaled.append((im if im.size == (w, h) else im.resize((w, h), Image.Resampling.BICUBIC), label))
    width = sum(im.width for im, _ in scaled) + GAP * (len(scaled) + 1)
    canvas = Image.new("RGB", (width, h + CAPTION_H + 2 * GAP), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    x = GAP
    for im, label in scaled:
        canvas.paste(im, (x, GAP))
        text = label if len(label) <= max(8, im.width // 8) else label[: max(8, im.width // 8) - 1] + "…"
        draw.text((x + 2, GAP + h + 4), text, fill=(0, 0, 0), font=font)
        x += im.width + GAP
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=6)
    data = buf.getvalue()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(data)
    return data


def side_by_side_for_item(data: str, item_id: str, out: str | Path | None = None, variants: list[str] | None = None) -> bytes:
    """The original image of `item_id` in dataset `data` next to its distorted variants."""
    import pyarrow.compute as pc

    from povid_cli.core.store import Dataset

    ds = Dataset.open(data)
    items = ds.read_all("items")
    dist = ds.read_all("distorted")
    if items is None or dist is None:
        raise PovidError(f"{data} needs items and distorted (run `povid distort {data}` first)")
    item = items.filter(pc.equal(items["id"], item_id)).to_pylist()
    rows = dist.filter(pc.equal(dist["item_id"], item_id)).to_pylist()
    if not item:
        raise PovidError(f"no item {item_id!r} in {data}")
    if variants is not None:
        rows = [r for v in variants for r in rows if r["variant"] == v]
    if not rows:
        raise PovidError(f"item {item_id!r} has no distorted image" + (f" for {variants}" if variants else ""))
    from stages.distort_recipe import materialise

    rows = [materialise(item[0], r) for r in rows]  # distorted images kept as recipes are rebuilt here
    return side_by_side(item[0]["image"]["bytes"], [(r["image"]["bytes"], r["variant"]) for r in rows], out)
