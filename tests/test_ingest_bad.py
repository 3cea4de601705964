"""Bad input gets a clear answer and loses nothing: good rows in, each bad one in failed/ingest with a reason."""

from __future__ import annotations

import builtins
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from povid_cli.core.images import decode_rgb
from povid_cli.core.store import Dataset

RED, BLUE = (220, 20, 20), (20, 20, 220)


def jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def png_bomb(width=50000, height=50000) -> bytes:
    """A real 1x1 PNG whose header claims width x height (CRC fixed, so only the size is a lie)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def exif_rotated() -> bytes:
    """Stored 60x40, left half red, right half blue, EXIF orientation 6 (display rotated 90 deg clockwise):
    shown upright it is 40x60 with red on top and blue below."""
    im = Image.new("RGB", (60, 40), BLUE)
    im.paste(RED, (0, 0, 30, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg(im, exif=exif.tobytes())


def animated_gif() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), (20, 200, 20))]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


@pytest.fixture
def bad_world(tmp_path):
    """root/ with good and bad images, root/ann.json with bad paths, a secret image outside root."""
    root = tmp_path / "root"
    root.mkdir()
    good = jpeg(Image.new("RGB", (64, 48), (120, 130, 140)))
    (root / "good.jpg").write_bytes(good)
    (root / "truncated.jpg").write_bytes(jpeg(Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)))[:1500])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a jpeg\n")
    (root / "bomb.png").write_bytes(png_bomb())
    (root / "cmyk.jpg").write_bytes(jpeg(Image.new("CMYK", (40, 30), (0, 255, 255, 0))))
    (root / "deep16.png").write_bytes(_png16())
    (root / "rotated.jpg").write_bytes(exif_rotated())
    (root / "anim.gif").write_bytes(animated_gif())
    secret = tmp_path / "secret.jpg"  # a valid image outside root: reading it would ingest it
    secret.write_bytes(jpeg(Image.new("RGB", (20, 20), (1, 2, 3))))
    os.symlink(secret, root / "link.jpg")
    conv = lambda q: [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": "Something."}]  # noqa: E731
    ann = [
        {"id": "ok", "image": "good.jpg", "conversations": conv("What is grey?")},
        {"id": "missing", "image": "nowhere/missing.jpg", "conversations": conv("Q1")},
        {"id": "escape", "image": "../secret.jpg", "conversations": conv("Q2")},
        {"id": "passwd", "image": "../../etc/passwd", "conversations": conv("Q3")},
        {"id": "absolute", "image": str(secret), "conversations": conv("Q4")},
        {"id": "abs-passwd", "image": "/etc/passwd", "conversations": conv("Q5")},
    ]
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann/ann.json").write_text(json.dumps(ann))
    (tmp_path / "ann/broken.json").write_text('[{"id": "x", "image": "good.jpg", ')
    return tmp_path, root, secret


def _png16() -> bytes:
    arr = np.zeros((20, 30), dtype=np.uint16)
    arr[:, 15:] = 65535
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # mode I;16
    return buf.getvalue()


def test_bad_inputs_fail_one_by_one_with_reasons(cli, bad_world, monkeypatch):
    tmp, root, secret = bad_world
    conv = lambda q: [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": "Something."}]  # noqa: E731
    opened: list[str] = []
    real_open = builtins.open

    def spy_open(file, *a, **kw):
        if isinstance(file, (str, os.PathLike)):
            opened.append(os.path.realpath(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", spy_open)
    data = tmp / "data"
    r = cli(["ingest", root, tmp / "ann/ann.json", tmp / "ann/broken.json", "--image-root", root, "-o", data,
             "--workers", "1"])
    monkeypatch.setattr(builtins, "open", real_open)

    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert "11 failed" in r.output

    ds = Dataset.open(str(data))
    rows = {(r["source_id"]): r for r in ds.read_all("items").to_pylist()}
    assert set(rows) == {"good.jpg", "cmyk.jpg", "deep16.png", "rotated.jpg", "anim.gif", "ok"}

    failed = ds.read_all("failed/ingest").to_pylist()
    assert len(failed) == 11
    by_name = {}
    for f in failed:
        d = json.loads(f["detail"])
        by_name[d["image"] or d["source_id"] or os.path.basename(d["source"])] = f
        assert f["error"] and f["retryable"] is False
    reasons = {k: v["error"] for k, v in by_name.items()}
    assert set(reasons) == {"truncated.jpg", "zero.jpg", "text.jpg", "bomb.png", "link.jpg", "nowhere/missing.jpg",
                            "escape", "passwd", "absolute", "abs-passwd", "broken.json"}
    assert "truncated" in reasons["truncated.jpg"] or "broken image" in reasons["truncated.jpg"]
    assert "empty file" in reasons["zero.jpg"]
    assert "not an image" in reasons["text.jpg"]
    assert "bomb" in reasons["bomb.png"] or "too large" in reasons["bomb.png"]
    assert "escapes the image root" in reasons["link.jpg"]
    assert "missing.jpg" in reasons["nowhere/missing.jpg"] and "cannot be read" in reasons["nowhere/missing.jpg"]
    assert "not valid JSON" in reasons["broken.json"]
    errors = " | ".join(f["error"] for f in failed)
    assert errors.count("escapes the image root") == 3  # link.jpg, ../secret.jpg, ../../etc/passwd
    assert errors.count("absolute image path refused") == 2
    assert {f["kind"] for f in failed} == {"bad_image", "bad_path", "missing_image", "bad_source"}

    # Nothing outside the image root (or the annotation folder) was read.
    assert str(secret) not in opened and "/etc/passwd" not in opened
    assert all(not p.startswith(str(tmp)) or p.startswith((str(root), str(tmp / "ann"), str(data))) for p in opened)

    # Normalised: RGB everywhere, the rotated photo upright with the right pixels.
    for row in rows.values():
        assert decode_rgb(row["image"]["bytes"]).mode == "RGB"
    rot = rows["rotated.jpg"]
    im = decode_rgb(rot["image"]["bytes"])
    assert (rot["width"], rot["height"]) == im.size == (40, 60)
    top, bottom = np.asarray(im)[10, 20].astype(int), np.asarray(im)[50, 20].astype(int)
    assert top[0] > 180 and top[2] < 60, top  # red on top
    assert bottom[2] > 180 and bottom[0] < 60, bottom  # blue below
    deep = np.asarray(decode_rgb(rows["deep16.png"]["image"]["bytes"]))
    assert deep[0, 0].tolist() == [0, 0, 0] and deep[0, 29].tolist() == [255, 255, 255]
    gif = np.asarray(decode_rgb(rows["anim.gif"]["image"]["bytes"]))
    assert gif[16, 16, 0] > 180 and gif[16, 16, 1] < 60  # the first (red) frame
    cmyk = np.asarray(decode_rgb(rows["cmyk.jpg"]["image"]["bytes"]))
    assert cmyk[15, 20, 0] > 200 and cmyk[15, 20, 1] < 60  # cyan 0, magenta+yellow full -> red

    # Fix two files and run again: they are ingested and leave failed/ingest; the rest stay failed.
    # (An empty list would be a source that yields no record, itself an error since issue 12: one record.)
    (root / "zero.jpg").write_bytes(jpeg(Image.new("RGB", (30, 30), (5, 200, 5))))
    (tmp / "ann/broken.json").write_text(json.dumps([{"id": "y", "image": "good.jpg", "conversations": conv("Fixed?")}]))
    r = cli(["ingest", root, tmp / "ann/ann.json", tmp / "ann/broken.json", "--image-root", root, "-o", data,
             "--workers", "1"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    ds = Dataset.open(str(data))
    assert "zero.jpg" in {r["source_id"] for r in ds.read_all("items").to_pylist()}
    left = ds.read_all("failed/ingest").to_pylist()
    assert len(left) == 9 and not any("zero.jpg" in f["error"] or "broken.json" in f["error"] for f in left)


def test_all_good_exits_zero(cli, tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (16, 16), RED).save(tmp_path / "imgs/a.png")
    r = cli(["ingest", tmp_path / "imgs", "-o", tmp_path / "data", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert not Dataset.open(str(tmp_path / "data")).has("failed/ingest")


def test_missing_source_is_one_clear_line(cli, tmp_path):
    r = cli(["ingest", tmp_path / "nope.json", "-o", tmp_path / "data"])
    assert r.exit_code == 1
    assert "does not exist" in r.output and "Traceback" not in r.output
