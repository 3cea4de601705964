"""`povid train` on contrast pairs (image-contrast DPO: the rejected log-prob is the chosen answer under the
rejected image) and `--loss mdpo` (mDPO: DPO + conditional + anchor), on tiny random VLMs (CPU)."""

from __future__ import annotations

import io
import math

import pytest
from test_train import FAST, make_pairs, metrics, pair_rows, run_ok, series, shape_png
from test_train_weights import WEIGHTS, trainer_for

pytestmark = pytest.mark.train


def grey_png(size: int = 64, w: int | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w or size, size), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


def contrast_rows(n: int, size: int = 64, rejected_width: int | None = None) -> list[dict]:
    """Contrast pairs: the answer under the shape image (chosen) vs under a grey image (rejected)."""
    rows = pair_rows(n, size=size)
    for r in rows:
        r.update(kind="contrast", rejected=r["chosen"], variant="diffusion", id=r["id"] + "c",
                 rejected_image={"bytes": grey_png(size, rejected_width), "path": None})
    return rows


def examples(rows):
    from povid_cli.train.data import _decode, _from_povid

    out = []
    for r in map(_from_povid, rows):
        ex = {k: r[k] for k in ("prompt", "chosen", "rejected")}
        for k in ("images", "rejected_images", "cond_images"):
            if r.get(k):
                ex[k] = [_decode(i["bytes"]) for i in r[k]]
        out.append(ex)
    return out


def token_logps(model, batch):
    import torch

    kw = {k: v for k, v in batch.items() if k not in ("completion_mask", "weight", "cond_mask")}
    ids, mask = batch["input_ids"], batch["completion_mask"]
    with torch.no_grad():
        logits = model(**kw).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]


# -- the collator -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_collator_is_trls_and_gives_the_rejected_half_its_own_images(tiny_vlm, family):
    import torch
    from transformers import AutoProcessor
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from povid_cli.train.collator import PairCollator

    proc = AutoProcessor.from_pretrained(tiny_vlm(family))
    plain = examples(pair_rows(3))
    a = DataCollatorForVisionPreference(processor=proc, max_length=None)([dict(e) for e in plain])
    b = PairCollator(processor=proc, max_length=None)([dict(e) for e in plain])
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # ordinary rows: TRL's batch exactly

    # a contrast row (a grey, wider rejected image): its rejected half is prompted with that image, and is the
    # TRL batch of (rejected image, chosen answer)
    rows = contrast_rows(2, rejected_width=96)
    got = PairCollator(processor=proc, max_length=None)(examples(rows))
    swapped = [{**e, "images": e["rejected_images"]} for e in examples(rows)]
    for e in swapped:
        del e["rejected_images"]
    ref = DataCollatorForVisionPreference(processor=proc, max_length=None)(swapped)
    if family == "llava":  # a fixed-size image: the same tokens, only the pixels differ (qwen: more image tokens)
        assert torch.equal(got["input_ids"][2:], got["input_ids"][:2])
    n_img = ref["pixel_values"].shape[0] // 2
    assert torch.equal(got["pixel_values"][-n_img:], ref["pixel_values"][:n_img])  # the rejected images' pixels
    assert not torch.equal(got["pixel_values"][:n_img], got["pixel_values"][-n_img:])


# -- contrast pairs: the rejected log-prob is the chosen answer under the rejected image ------------------
def test_contrast_loss_is_dpo_on_the_answer_under_the_two_images(tmp_path, tiny_vlm):
    import torch
    import torch.nn.functional as F
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from povid_cli.train.data import _from_povid, to_hf
    from povid_cli.train.weighted import WeightedDPOTrainer

    model_dir = tiny_vlm("qwen2_vl")
    rows = contrast_rows(3, rejected_width=96)
    trainer = trainer_for(tmp_path, model_dir, cls=WeightedDPOTrainer)
    trainer.train_dataset = to_hf([_from_povid(r) for r in rows])
    batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in range(3)])
    trainer.model.train()
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, batch).item()

    # by hand, from two TRL batches built independently: (clean image, answer) and (grey image, answer)
    def answer_logps(model, image_key):
        exs = examples(rows)
        for e in exs:
            e["images"] = e[image_key]
            e.pop("rejected_images")
        b = DataCollatorForVisionPreference(processor=trainer.processing_class, max_length=None)(exs)
        return token_logps(model, b).sum(1)[:3]  # the chosen half: prompt(image) + answer

    pc, pr = answer_logps(trainer.model, "images"), answer_logps(trainer.model, "rejected_images")
    rc, rr = answer_logps(trainer.ref_model, "images"), answer_logps(trainer.ref_model, "rejected_images")
    delta = (pc - rc) - (pr - rr)
    assert delta.abs().min() > 1e-3
    assert got == pytest.approx((-F.logsigmoid(0.1 * delta)).mean().item(), rel=1e-4)


def test_povid_loss_reads_both_answers_under_the_clean_image_in_a_contrast_batch(tmp_path, tiny_vlm):
    import torch

    from povid_cli.train.data import _from_povid, to_hf
    from povid_cli.train.losses import PovidDPOTrainer, clean_images_twice

    trainer = trainer_for(tmp_path, tiny_vlm("qwen2_vl"), "povid", cls=PovidDPOTrainer, weighted=False)
    trainer.train_dataset = to_hf([_from_povid(r) for r in contrast_rows(2, rejected_width=96) + pair_rows(1)])
    batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in range(3)])
    grid = batch["image_grid_thw"]
    assert not torch.equal(grid[:3], grid[3:])  # the grey images are wider: more patches
    twice = clean_images_twice(batch, 3)
    assert torch.equal(twice["image_grid_thw"], torch.cat([grid[:3], grid[:3]]))
    half = int(grid[:3].prod(-1).sum())
    assert torch.equal(twice["pixel_values"], torch.cat([batch["pixel_values"][:half]] * 2))
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)  # runs: image tokens match the images in both terms
    assert math.isfinite(loss.item())


# -- mDPO ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighted,sft", [(False, 0.0), (True, 0.5)])
def test_mdpo_loss_equals_a_hand_computation(tmp_path, tiny_vlm, weighted, sft):
    """dpo + conditional + anchor from the policy's and the reference's log-probs of the three row groups; a row
    whose corrupted image is the clean one has a conditional margin of exactly 0; a contrast row has no second
    conditional term."""
    import torch
    import torch.nn.functional as F

    from povid_cli.train.data import _from_povid, to_hf
    from povid_cli.train.mdpo import MDPOTrainer

    trainer = trainer_for(tmp_path, tiny_vlm("llava"), "mdpo", sft=sft, cls=MDPOTrainer, weighted=weighted)
    rows = [_from_povid(r) for r in pair_rows(2) + contrast_rows(1)]
    rows[0]["cond_images"] = rows[0]["images"]  # the "corrupted" image is the clean one
    rows[1]["cond_images"] = [{"bytes": shape_png("blue"), "path": None}]  # an item's contrast image
    for r, w in zip(rows, WEIGHTS):
        r["weight"] = w
    trainer.train_dataset = to_hf(rows, weighted)
    batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in range(3)])
    assert batch["input_ids"].shape[0] == 9 and batch["cond_mask"].tolist() == [1.0, 1.0, 0.0]
    trainer.model.train()
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, batch).item()

    pol, ref = token_logps(trainer.model, batch), token_logps(trainer.ref_model, batch)
    (c, r, cc), (rc, rr, rcc) = pol.sum(1).chunk(3), ref.sum(1).chunk(3)
    beta = 0.1
    w = torch.tensor(WEIGHTS) if weighted else torch.ones(3)
    dpo = -F.logsigmoid(beta * ((c - rc) - (r - rr)))
    cond = -F.logsigmoid(beta * ((c - rc) - (cc - rcc))) * torch.tensor([1.0, 1.0, 0.0])
    anchor = -F.logsigmoid(beta * (c - rc))
    expected = (w * (dpo + cond + anchor)).mean()
    if sft:
        expected = expected + sft * -(pol[:3] * w[:, None]).sum() / batch["completion_mask"][:3, 1:].sum()
    assert got == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)

    m = trainer._metrics["train"]
    assert m["mdpo/conditional_margin"][-1] == pytest.approx(((c - rc) - (cc - rcc))[1].item() * beta / 2, rel=1e-4)
    assert (c[0] - rc[0]) - (cc[0] - rcc[0]) == 0.0  # identical images, same forward: exactly 0
    assert m["mdpo/anchor_reward"][-1] == pytest.approx((beta * (c - rc)).mean().item(), rel=1e-4)
    assert m["mdpo/conditional_rows"][-1] == pytest.approx(2 / 3)


def test_mdpo_conditional_margin_is_exactly_zero_with_an_identical_image(tmp_path, tiny_vlm):
    import torch

    from povid_cli.train.data import _from_povid, to_hf
    from povid_cli.train.mdpo import MDPOTrainer

    trainer = trainer_for(tmp_path, tiny_vlm("qwen2_vl"), "mdpo", cls=MDPOTrainer, weighted=False)
    rows = [_from_povid(r) for r in pair_rows(3)]
    for r in rows:
        r["cond_images"] = r["images"]
    trainer.train_dataset = to_hf(rows)
    batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in range(3)])
    trainer.model.train()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    m = trainer._metrics["train"]
    assert m["mdpo/conditional_margin"] == [0.0] and m["mdpo/conditional_loss"] == [pytest.approx(math.log(2))]


def test_mdpo_random_crop_keeps_under_a_fifth_of_the_image():
    import random

    from PIL import Image

    from povid_cli.train.collator import random_crop

    im = Image.new("RGB", (120, 90))
    im.paste((255, 0, 0), (0, 0, 60, 90))  # left half red
    rng = random.Random(0)
    reds = []
    for _ in range(40):
        out = random_crop(im, rng)
        assert out.size == im.size
        reds.append(sum(1 for p in out.getdata() if p[0] > 128) / (120 * 90))
    assert min(reds) < 0.05 and max(reds) > 0.95  # crops land on either side: at most 20% of the image each


@pytest.mark.slow
def test_train_cli_contrast_pairs_and_mdpo(tmp_path, cli, tiny_vlm):
    rows = pair_rows(8, kinds=("text",)) + contrast_rows(8)
    for r in rows[8:]:
        r["item_id"] = r["item_id"].replace("i", "j")  # contrast pairs of other items: mDPO crops for the text ones
    rows[8]["item_id"] = rows[0]["item_id"]  # ... except this one: the text pair's item has a contrast image
    data = make_pairs(tmp_path / "data", rows)
    out = tmp_path / "out"
    r = run_ok(cli, [data, "--model", tiny_vlm("qwen2_vl"), "-o", out, "--max-steps", "2", "--eval-fraction", "0",
                     "--loss", "mdpo", *FAST])
    assert "mdpo: 1 pairs take their item's contrast image as the corrupted image, 7 mDPO's random crop; 8 " \
           "contrast pairs train as their own conditional preference" in r.stderr
    assert "stage 2/2: 8 image pairs" in r.stderr  # --schedule povid: contrast pairs are the image side
    m = metrics(out)
    for key in ("mdpo/conditional_margin", "mdpo/anchor_reward", "mdpo/dpo_loss", "mdpo/anchor_loss"):
        assert series(m, key, "text"), key
    assert series(m, "mdpo/conditional_rows", "image") == [0.0, 0.0]  # contrast rows: no second conditional term
    out2 = tmp_path / "out2"
    run_ok(cli, [data, "--model", tiny_vlm("qwen2_vl"), "-o", out2, "--max-steps", "2", "--eval-fraction", "0.25",
                 "--schedule", "mixed", "--kind", "contrast", *FAST])
    assert series(metrics(out2), "eval_contrast_loss")[0] == pytest.approx(math.log(2), abs=1e-4)
