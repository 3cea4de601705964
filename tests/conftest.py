"""Shared fixtures: the bundled sample, small datasets built in tmp_path, and a CLI runner."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ["POVID_NO_PROGRESS"] = "1"

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "sample"


@pytest.fixture
def sample_dir() -> Path:
    """The bundled sample: 11 real photos, 22 items in LLaVA format (examples/sample/llava.json)."""
    return SAMPLE


@pytest.fixture
def cli():
    """Invoke the povid CLI in-process: cli(["ingest", ...]) -> click Result (exit_code, output, stderr)."""
    from typer.testing import CliRunner

    from povid_cli.cli import app

    runner = CliRunner()

    def invoke(args, **kw):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kw)

    return invoke


@pytest.fixture
def sample_data(tmp_path, cli) -> Path:
    """A dataset with the 22 sample items ingested (items only)."""
    data = tmp_path / "data"
    r = cli(["ingest", SAMPLE / "llava.json", "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    return data


def materialised(data, rows: list[dict] | None = None) -> list[dict]:
    """DATA's distorted rows (or `rows` of them) with their image bytes: `distort` keeps recipes by default
    (stages/distort_recipe.py), so tests that look at pixels rebuild them, as sample and export do."""
    from povid_cli.core.store import Dataset
    from stages.distort_recipe import materialise

    ds = Dataset.open(str(data))
    items = {r["id"]: r for r in ds.read_all("items").to_pylist()}
    if rows is None:
        t = ds.read_all("distorted")
        rows = t.to_pylist() if t is not None else []
    return [materialise(items[r["item_id"]], r) for r in rows]


def png_bytes(color=(200, 30, 30), size=(64, 48), mode="RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def make_items(tmp_path):
    """Build a dataset from item dicts without ingest: make_items([{"prompt":..., "chosen":...}], shard_size=2).
    An item's "rejected" (a string or a list) becomes its given pairs, as ingest stores them."""
    import pyarrow as pa

    from povid_cli.core.schemas import GIVEN, ITEMS
    from povid_cli.core.stage import pair_id
    from povid_cli.core.store import Dataset, digest
    from povid_cli.ingest.normalise import image_sha256, item_id

    def build(items: list[dict], shard_size: int = 512, path: Path | None = None) -> Path:
        path = path or tmp_path / "data"
        ds = Dataset.open_or_create(str(path))
        rows = []
        for i, it in enumerate(items):
            data = it.get("image_bytes") or png_bytes(((37 * i) % 256, 80, 160))
            sha = image_sha256(data)
            prompt = it.get("prompt", "Describe this image in detail.")
            chosen = it.get("chosen", "A red square on a blue background.")
            rows.append({
                "id": it.get("id") or item_id(sha, prompt, chosen), "image": {"bytes": data, "path": f"img{i}.png"},
                "image_sha256": sha, "width": it.get("width", 64), "height": it.get("height", 48), "prompt": prompt,
                "chosen": chosen, "has_answer": it.get("has_answer", True),
                "rejected": it.get("rejected"), "task": it.get("task", "caption"), "objects": it.get("objects"),
                "boxes": it.get("boxes"), "extra_images": it.get("extra_images"), "source": "test", "source_id": str(i), "turn": 0,
            })
        shards = ds.stage_record("ingest").setdefault("shards", {})
        for k in range(0, len(rows), shard_size):
            chunk = rows[k : k + shard_size]
            key = digest(sorted(r["id"] for r in chunk))
            given = [{"id": pair_id(r["id"], "text", None, rej), "item_id": r["id"], "rejected": rej, "source": "test",
                      "source_id": r["source_id"]}
                     for r in chunk for rej in ([r["rejected"]] if isinstance(r["rejected"], str) else r["rejected"] or [])]
            if given:
                ds.write_shard("given", k // shard_size, pa.Table.from_pylist(given, schema=GIVEN), key)
            ds.write_shard("items", k // shard_size, pa.Table.from_pylist(chunk, schema=ITEMS), key)
            shards[f"{k // shard_size:05d}"] = {"key": key, "rows": {"items": len(chunk)}}  # committed, as ingest does
        ds.save_manifest()
        return path

    return build


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """Tiny random VLM folders (tests/tiny_vlms.py): tiny_vlm("qwen2_vl") -> Path, built once per session.
    Families: llava | qwen2_vl | qwen2_5_vl | idefics3. Skips the test when torch/transformers are missing."""
    built: dict[str, Path] = {}

    def get(family: str = "qwen2_vl") -> Path:
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
        if family not in built:
            from tiny_vlms import build_tiny_vlm

            built[family] = build_tiny_vlm(tmp_path_factory.mktemp(f"tiny-{family}"), family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def vllm_server(tiny_vlm, tmp_path_factory):
    """One `vllm serve` of the tiny Qwen2.5-VL for the whole session: (base URL, model path).

    The model answers to its path and to the name "tiny"."""
    pytest.importorskip("vllm")
    from vllm_serve import vllm_serve

    model = tiny_vlm("qwen2_5_vl")
    with vllm_serve(model, tmp_path_factory.mktemp("vllm-serve"), names=("tiny",)) as url:
        yield url, model
