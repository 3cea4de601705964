"""Stages are pure functions over a batch of rows: no dataset, no files, no runner needed to use one."""

from __future__ import annotations

from povid_cli.core.stage import Batch
from stages.distort import DistortConfig, DistortStage
from stages.filter import FilterConfig, FilterStage
from stages.hallucinate import HallucinateConfig, HallucinateStage
from conftest import png_bytes

ITEM = {"id": "item1", "prompt": "Describe this image in detail.", "chosen": "A knife lies on a wooden table.",
        "has_answer": True, "task": "caption", "objects": ["knife", "dining table"], "image": None,
        "rejected": None, "source": "test", "source_id": "1"}


def test_hallucinate_rules_rewrites_each_row_deterministically():
    stage = HallucinateStage(HallucinateConfig(n=2, seed=3))
    out = stage.process(Batch([ITEM, {**ITEM, "id": "empty", "chosen": "", "has_answer": False}]))
    rows = out.outputs["hallucinated"]
    assert [r["id"] for r in rows] == ["item1-h0", "item1-h1"]
    assert all(r["rejected"] != ITEM["chosen"] and r["edits"] for r in rows)
    assert [(f["id"], f["kind"], f["retryable"]) for f in out.failed] == [("empty", "no_answer", False)]
    again = HallucinateStage(HallucinateConfig(n=2, seed=3)).process(Batch([ITEM]))
    assert again.outputs["hallucinated"] == rows


def test_filter_keeps_a_hallucinated_pair_and_drops_an_identical_one():
    hallucinated = [
        {"id": "item1-h0", "item_id": "item1", "rejected": "A knife lies on a wooden table. A fork rests beside it.",
         "hallucination_types": ["object"], "edits": [], "model": None},
        {"id": "item1-h1", "item_id": "item1", "rejected": "a knife lies on a wooden table", "edits": []},
    ]
    out = FilterStage(FilterConfig()).process(Batch([ITEM], {"hallucinated": hallucinated}))
    [kept] = out.outputs["pairs"]
    assert kept["rejected_id"] == "item1-h0" and kept["hallucinated_objects"] == ["fork"]
    assert [(d["rejected_id"], d["drop_reason"]) for d in out.outputs["dropped"]] == [("item1-h1", "identical")]


def test_distort_gives_one_image_per_method_and_a_failed_row_for_a_broken_image():
    stage = DistortStage(DistortConfig(methods=("diffusion", "blur:sigma=2"), size=32, store="pixels"))
    good = {**ITEM, "image": {"bytes": png_bytes(size=(64, 48)), "path": "a.png"}}
    broken = {**ITEM, "id": "item2", "image": {"bytes": b"not an image", "path": "b.png"}}
    out = stage.process(Batch([good, broken]))
    assert [r["id"] for r in out.outputs["distorted"]] == ["item1-diffusion", "item1-blur:sigma=2"]
    assert all(r["image"]["bytes"][:8] == b"\x89PNG\r\n\x1a\n" for r in out.outputs["distorted"])
    assert [(f["id"], f["kind"]) for f in out.failed] == [("item2", "bad_image")]
