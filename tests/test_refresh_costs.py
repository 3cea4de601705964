"""A refresh costs what is new: ingest does not read unchanged files, report reads only the rows it shows,
and distorted images are recipes rebuilt (and checked) where they are used."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
from conftest import png_bytes

from povid_cli.core.errors import RowError
from povid_cli.core.fs import Location
from povid_cli.core.store import Dataset
from stages.distort import DistortConfig, DistortStage
from stages.distort_recipe import materialise


def photo_folder(path, colours):
    path.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(colours):
        (path / f"p{i}.png").write_bytes(png_bytes(c, (40, 30)))
        (path / f"p{i}.txt").write_text(f"A plain picture number {i}.")
    return path


def test_ingest_does_not_read_files_whose_size_and_mtime_are_unchanged(cli, tmp_path):
    photos = photo_folder(tmp_path / "photos", [(10, 20, 30), (200, 10, 10)])
    data = tmp_path / "data"
    assert cli(["ingest", photos, "-o", data, "-w", "1"]).exit_code == 0
    assert (data / "cache" / "ingest-files.parquet").exists()

    # other pixels, same size, same mtime: ingest takes it for the file it hashed (it does not read it) ...
    p0 = photos / "p0.png"
    st = os.stat(p0)
    p0.write_bytes(png_bytes((10, 20, 31), (40, 30)))
    assert os.stat(p0).st_size == st.st_size
    os.utime(p0, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = cli(["ingest", photos, "-o", data, "-w", "1"])
    assert r.exit_code == 0 and "0 new items, 2 already present" in r.output

    # ... and a new mtime makes it read the file again: another image, another item
    os.utime(p0, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r = cli(["ingest", photos, "-o", data, "-w", "1"])
    assert r.exit_code == 0 and "1 new items, 1 already present" in r.output, r.output

    # a broken cache only costs a full read
    (data / "cache" / "ingest-files.parquet").write_bytes(b"not parquet")
    r = cli(["ingest", photos, "-o", data, "-w", "1"])
    assert r.exit_code == 0 and "0 new items, 2 already present" in r.output, r.output


def test_report_reads_the_text_and_images_of_the_rows_it_shows_only(make_items, cli, tmp_path, monkeypatch):
    data = make_items([{"chosen": f"A red square on a white table, picture {i}.", "image_bytes": png_bytes((i, 9, 9))}
                       for i in range(30)])
    assert cli(["hallucinate", data, "-w", "1"]).exit_code == 0
    assert cli(["filter", data, "--min-similarity", "0", "--no-hallucination-check"]).exit_code == 0
    assert Dataset.open(str(data)).read_all("pairs").num_rows >= 20

    reads = []
    real_read, real_take = Location.read_parquet, Location.read_parquet_take
    monkeypatch.setattr(Location, "read_parquet", lambda self, columns=None: (
        reads.append((os.path.basename(os.path.dirname(self.path)), None, columns)), real_read(self, columns))[1])
    monkeypatch.setattr(Location, "read_parquet_take", lambda self, idx, columns=None: (
        reads.append((os.path.basename(os.path.dirname(self.path)), len(idx), columns)), real_take(self, idx, columns))[1])
    r = cli(["report", data, "-o", tmp_path / "r.html", "--limit", "3", "--no-dropped"])
    assert r.exit_code == 0, r.output
    images = [(out, n) for out, n, cols in reads if cols is None or "image" in cols]
    assert images and all(n is not None and n <= 3 for _, n in images), reads  # only the shown rows' images
    assert all(cols is not None for _, _, cols in reads if _ in ("pairs", "items")), reads  # never a whole shard


def test_a_distorted_image_is_a_recipe_rebuilt_and_checked_where_it_is_used():
    item = {"id": "i1", "image": {"bytes": png_bytes((120, 60, 30), (48, 40)), "path": None}, "extra_images": None,
            "boxes": None}
    [row], _ = DistortStage(DistortConfig(size=32)).distort_item(item)
    assert row["image"]["bytes"] is None and json.loads(row["recipe"])["method"] == "diffusion"
    [stored], _ = DistortStage(DistortConfig(size=32, store="pixels")).distort_item(item)
    assert materialise(item, row)["image"]["bytes"] == stored["image"]["bytes"]  # the same bytes, rebuilt

    with pytest.raises(RowError) as e:  # pixels that differ from what distort made are never used silently
        materialise(item, {**row, "sha256": ["0" * 64]})
    assert e.value.kind == "rebuild_mismatch" and "--store pixels" in str(e.value)


def test_distort_store_pixels_keeps_the_images(sample_data, cli):
    r = cli(["distort", sample_data, "--store", "pixels", "--size", "32", "-w", "1", "--limit", "2"])
    assert r.exit_code == 0, r.output
    rows = pq.read_table(sample_data / "distorted").to_pylist()
    assert rows and all(x["image"]["bytes"][:4] == b"\x89PNG" for x in rows)


def test_filter_reads_item_pixels_only_when_a_pair_kind_or_the_judge_looks_at_them():
    from stages.filter import FilterConfig, FilterStage

    assert FilterStage(FilterConfig()).skips("items") == {"image", "extra_images"}  # text and image pairs
    assert FilterStage(FilterConfig(kinds=("text", "contrast"))).skips("items") == set()
    assert FilterStage(FilterConfig(judge_model="m")).skips("items") == set()  # the judge is shown the image
    assert FilterStage(FilterConfig(judge_model="m", judge_image=False)).skips("items") == {"image", "extra_images"}
    assert FilterStage(FilterConfig()).skips("hallucinated") == set()
