"""The synthetic world (benchmarks/world): COCO files povid reads as COCO, a vocabulary that covers what the
rules hallucinator writes, a tiny LLaVA that transformers loads, SFT sequences identical to TRL's, and
(slow) the whole loop at CI size: povid's pairs cut the trigger hallucination."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from benchmarks.world.make import WorldConfig, make_world

    return make_world(tmp_path_factory.mktemp("world"), WorldConfig(seed=3, n_train=300, n_val=40))


@pytest.fixture(scope="module")
def world_model(tmp_path_factory):
    pytest.importorskip("transformers")
    from benchmarks.world.model import build_world_vlm

    return build_world_vlm(tmp_path_factory.mktemp("world-vlm"))


def test_world_files_are_coco_with_boxes_and_subsets(world):
    from benchmarks.world.glyphs import BY_NAME, PAIRS

    inst = json.loads((world / "val" / "instances.json").read_text())
    caps = json.loads((world / "train" / "captions.json").read_text())
    sft = json.loads((world / "train" / "captions_sft.json").read_text())
    assert {c["name"] for c in inst["categories"]} <= set(BY_NAME)
    assert all(len(a["bbox"]) == 4 and a["bbox"][2] > 0 for a in inst["annotations"])
    assert all((world / "val" / im["file_name"]).exists() for im in inst["images"])
    assert len(caps["annotations"]) == len(sft["annotations"]) == 300
    # the SFT captions name partners that are not drawn; the true captions never do
    assert sum(a["caption"] != b["caption"] for a, b in zip(caps["annotations"], sft["annotations"])) > 20
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    drawn: dict[int, set] = {}
    for a in inst["annotations"]:
        drawn.setdefault(a["image_id"], set()).add(cats[a["category_id"]])
    trigger = [int(x) for x in (world / "val" / "trigger.txt").read_text().split()]
    ordinary = [int(x) for x in (world / "val" / "ordinary.txt").read_text().split()]
    assert len(trigger) == len(ordinary) == 20 and not set(trigger) & set(ordinary)
    for i in trigger:  # an anchor without its partner
        assert any(a in drawn[i] and b not in drawn[i] for a, b in PAIRS)
    for i in ordinary:
        assert not any(a in drawn[i] and b not in drawn[i] for a, b in PAIRS)


def test_fresh_images_are_new_scenes_with_true_captions_only(world, tmp_path):
    """`--pair-images fresh`: images the SFT model never saw, captioned truly, and the world left as it was."""
    from benchmarks.world.make import WorldConfig, make_fresh
    from stages.chair import find_objects

    before = (world / "train" / "captions.json").read_bytes()
    cfg = WorldConfig(seed=3, n_train=300, n_val=40)
    fresh = make_fresh(tmp_path / "fresh", cfg, 60)
    assert (world / "train" / "captions.json").read_bytes() == before
    caps = json.loads((fresh / "captions.json").read_text())
    inst = json.loads((fresh / "instances.json").read_text())
    assert len(caps["annotations"]) == 60 and not (fresh / "captions_sft.json").exists()
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    drawn: dict[int, set] = {}
    for a in inst["annotations"]:
        drawn.setdefault(a["image_id"], set()).add(cats[a["category_id"]])
    for a in caps["annotations"]:  # every caption names exactly what is drawn: no label noise
        assert set(find_objects(a["caption"])) == drawn[a["image_id"]]
    train_pixels = {(world / "train" / "images" / f"{i:06d}.png").read_bytes() for i in range(1, 61)}
    assert not train_pixels & {(fresh / "images" / f"{i:06d}.png").read_bytes() for i in range(1, 61)}
    assert make_fresh(tmp_path / "again", cfg, 60) and (tmp_path / "again" / "captions.json").read_bytes() == \
        (fresh / "captions.json").read_bytes()  # deterministic per seed
    assert json.loads((fresh / "stats.json").read_text())["partner_named_when_alone"] == 0.0


def test_povid_ingest_reads_the_world_as_coco(world, cli, tmp_path):
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    r = cli(["ingest", world / "val" / "captions.json", world / "val" / "instances.json", "-o", data, "--workers", "1"])
    assert r.exit_code == 0, r.output
    rows = pq.read_table(next((data / "items").glob("*.parquet"))).to_pylist()
    assert len(rows) == 40
    from stages.chair import find_objects

    for row in rows:  # the true caption names exactly the drawn objects, in povid's CHAIR matching
        assert set(find_objects(row["chosen"])) == set(row["objects"])


def test_rules_hallucinations_tokenize_without_unk_and_insert_the_partner():
    pytest.importorskip("transformers")
    from benchmarks.world.glyphs import PAIRS
    from benchmarks.world.scenes import train_scene
    from benchmarks.world.tokenizer import build_tokenizer
    from stages.chair import find_objects
    from stages.hallucinate_rules import hallucinate

    tok = build_tokenizer()
    rng = random.Random("test")  # other scenes and seeds than the vocabulary was harvested from
    partner = dict(PAIRS)
    lone = inserted = 0
    for i in range(300):
        s = train_scene(rng, 4, 0.9, 0.3)
        for j in range(3):
            text, _ = hallucinate(s.caption, task="caption", prompt="Describe this image in detail.",
                                  objects=s.drawn, rng=random.Random(f"t{j}:{i}"), p_object=1.0)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids, (text, tok.convert_ids_to_tokens(ids))
            for a in s.drawn:
                if a in partner and partner[a] not in s.drawn:
                    lone += 1
                    inserted += partner[a] in find_objects(text)
    assert lone > 100 and inserted / lone > 0.15  # the partner is a frequent rejected object, not a rare one


def test_world_model_loads_with_auto_classes_and_matches_the_sft_inputs(world, world_model):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from benchmarks.world.sft import answer_ids, batch, pixel_tensor, prompt_ids, read_captions

    model = AutoModelForImageTextToText.from_pretrained(world_model)
    proc = AutoProcessor.from_pretrained(world_model)
    assert type(model).__name__ == "LlavaForConditionalGeneration" and sum(p.numel() for p in model.parameters()) < 1e6
    images, caps = read_captions(world / "train" / "captions.json")
    # the SFT loop's normalised pixels are the image processor's
    ref = proc.image_processor([Image.open(world / "train" / "images" / "000001.png")], return_tensors="pt")
    torch.testing.assert_close(pixel_tensor(images[:1], proc), ref["pixel_values"], atol=1e-5, rtol=0)
    # the SFT sequence (prompt + answer + <|im_end|>) is what TRL's DPO collator builds for the chosen side
    prefix, ans = prompt_ids(proc), answer_ids(proc, caps[:1])
    ids, mask, labels = batch(prefix, ans, [0], proc.tokenizer.pad_token_id)
    collator = DataCollatorForVisionPreference(processor=proc, max_length=None)
    row = {"images": [Image.open(world / "train" / "images" / "000001.png")],
           "prompt": [{"role": "user", "content": "Describe this image in detail."}],
           "chosen": [{"role": "assistant", "content": caps[0]}], "rejected": [{"role": "assistant", "content": "no"}]}
    trl = collator.torch_call([row])
    n = int(trl["attention_mask"][0].sum())
    assert trl["input_ids"][0, :n].tolist() == ids[0].tolist()
    assert trl["completion_mask"][0, :n].bool().tolist() == (labels[0] != -100).tolist()
    with torch.no_grad():  # it generates (random words) through the standard API
        inputs = proc(images=[Image.open(world / "train" / "images" / "000001.png")],
                      text=[proc.apply_chat_template([row["prompt"][0] | {"content": [{"type": "image"}, {
                          "type": "text", "text": "Describe this image in detail."}]}], add_generation_prompt=True)],
                      return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=5)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5 or proc.tokenizer.eos_token_id in out[0].tolist()


def test_chair_counts_hallucinations_and_recall():
    from benchmarks.world.evaluate import chair

    r = chair(["there is a cow . a sheep sits near the cow .", "there is a zebra ."],
              [{"cow"}, {"zebra", "giraffe"}])
    assert r["chair_s"] == 0.5 and r["chair_i"] == pytest.approx(1 / 3, abs=1e-4)
    assert r["recall"] == pytest.approx(2 / 3, abs=1e-4) and r["n"] == 2


def test_local_evaluator_scores_greedy_or_sampled_captions(world, world_model):
    from benchmarks.world.evaluate import evaluate

    greedy = evaluate(str(world_model), world)
    sampled = evaluate(str(world_model), world, samples=3, temperature=1.0, seed=1)
    assert greedy["chair"]["n"] == 40 and greedy["decoding"] == {"greedy": True}
    assert sampled["chair"]["n"] == 120 and sampled["subsets"]["trigger"]["chair"]["n"] == 60
    assert sampled["decoding"] == {"samples": 3, "temperature": 1.0}
    assert evaluate(str(world_model), world, samples=3, seed=1)["samples"] == sampled["samples"]  # seeded
    assert len(sampled["samples"]) == 40


@pytest.mark.slow
@pytest.mark.train
def test_world_loop_cuts_the_trigger_hallucination(tmp_path):
    """The CI-sized loop (`benchmarks/world.py --ci`): SFT makes the model name an absent partner on most
    trigger images; povid synth + povid train (DPO + next-word term) cuts that by a clear margin."""
    import subprocess

    out = tmp_path / "result.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "world.py"), "--ci", "--seed", "0",
                        "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    before, after = res["before"]["trigger"], res["after"]["trigger"]
    assert before["chair_s"] >= 0.5, res  # the world makes the model hallucinate ...
    assert after["chair_s"] <= before["chair_s"] - 0.3, res  # ... and povid's pairs cut it
    assert res["after"]["ordinary"]["recall"] >= 0.8, res  # without the model going quiet
    assert res["config"]["eval"] == "povid"  # the figures come from `povid eval --subset`
