"""`povid eval` end to end with a tiny random VLM through transformers, before and after `povid train`.

The figures of a random model mean nothing; what is checked is that the whole loop runs (eval the base,
train a LoRA adapter, eval the adapter, compare) and that the adapter really is applied.
"""

from __future__ import annotations

import json

import pytest

from test_eval import write_world
from test_train import FAST, make_pairs, pair_rows

pytestmark = [pytest.mark.slow, pytest.mark.train]

SMALL = ["--n-images", "3", "--max-tokens", "8", "--pope-max-tokens", "4", "--pope-splits", "random,adversarial",
         "--dtype", "float32"]


def run_ok(cli, args) -> dict:
    r = cli(["eval", *map(str, args)])
    assert r.exit_code == 0, r.output
    return json.loads(open(args[args.index("-o") + 1]).read())


def check_figures(res: dict) -> None:
    c = res["chair"]
    assert c["n"] == 3 and all(0 <= c[k] <= 1 for k in ("chair_s", "chair_i", "recall")) and c["avg_len"] >= 0
    for split in ("random", "adversarial"):
        m = res["pope"][split]
        assert m["n"] > 0 and m["n"] % 2 == 0
        assert all(0 <= m[k] <= 1 for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"))
    assert res["failed"] == 0 and res["usage"]["completion_tokens"] > 0


def test_eval_base_train_eval_adapter_compare(cli, tiny_vlm, tmp_path):
    world = write_world(tmp_path / "world")
    model = tiny_vlm("qwen2_vl")
    common = ["--backend", "transformers", "--coco-instances", world["instances"], "--coco-captions",
              world["captions"], "--images", world["images"], *SMALL]
    base = run_ok(cli, ["--model", model, *common, "-o", tmp_path / "base.json"])
    check_figures(base)
    assert base["adapter"] is None and base["backend"] == "transformers" and base["config"]["adapter_mode"] is None

    out = tmp_path / "ckpt"
    r = cli(["train", make_pairs(tmp_path / "pairs", pair_rows(8)), "--model", model, "-o", out, "--schedule", "mixed",
             "--max-steps", "2", "--eval-fraction", "0", *FAST])
    assert r.exit_code == 0, r.output
    # --model defaults to the adapter's base; the training folder itself is taken for its final/
    tuned = run_ok(cli, ["--adapter", out, *common, "-o", tmp_path / "tuned.json"])
    check_figures(tuned)
    assert tuned["model"] == str(model) and tuned["adapter"] == str(out / "final")
    assert tuned["config"]["adapter_mode"] == "peft-merged"
    texts = lambda name: [json.loads(ln).get("answer") for ln in (tmp_path / f"{name}.answers.jsonl").open()]  # noqa: E731
    assert texts("base") != texts("tuned")  # the adapter changed the answers

    again = run_ok(cli, ["--adapter", out / "final", *common, "-o", tmp_path / "tuned.json"])
    assert again["usage"]["generated"] == 0 and again["chair"] == tuned["chair"]  # all from the cache
    r = cli(["eval", "--compare", tmp_path / "base.json", tmp_path / "tuned.json"])
    assert r.exit_code == 0 and "CHAIR_s" in r.stdout and "delta" in r.stdout


def test_eval_llava_through_transformers(cli, tiny_vlm, tmp_path):
    world = write_world(tmp_path / "world")
    res = run_ok(cli, ["--model", tiny_vlm("llava"), "--backend", "transformers", "--coco-instances",
                       world["instances"], "--images", world["images"], *SMALL, "-o", tmp_path / "llava.json",
                       "--html", tmp_path / "llava.html"])
    check_figures(res)
    assert (tmp_path / "llava.html").stat().st_size > 1000
