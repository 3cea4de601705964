"""`train --weight-column` (MMedPO pair weights), `--curriculum K` (Curry-DPO) and the default schedule on data
with only one kind of pairs, on tiny random VLMs (CPU)."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest
from test_train import FAST, make_pairs, metrics, pair_rows, run_ok, series

pytestmark = pytest.mark.train

WEIGHTS = [0.2, 1.0, 0.0]


def weighted_trl(path, rows, weight):
    """TRL Parquet (what `povid export --format trl` writes after filter --weight-by) with one weight for all."""
    for r in rows:
        r["weight"] = weight
    import pyarrow.parquet as pq

    from povid_cli.export.formats import TRL_WEIGHTED, to_trl

    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(to_trl(rows, weighted=True), schema=TRL_WEIGHTED), path / "train.parquet")
    return path


def trainer_for(tmp_path, model_dir, loss="sigmoid", sft=0.0, weighted=True, cls=None, policy=None, **extra):
    """A full-model trainer with an explicit reference (the policy is perturbed so it differs from it)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from povid_cli.train.trainer import TrainConfig, dpo_args
    from povid_cli.train.weighted import WeightedDPOTrainer

    cfg = TrainConfig(data="-", model=str(model_dir), output=str(tmp_path), loss=loss, sft_weight=sft, full=True,
                      batch_size=3, max_length=256, label_smoothing=0.2 if loss == "robust" else 0.0)
    if policy is None:
        policy = AutoModelForImageTextToText.from_pretrained(model_dir)
        torch.manual_seed(0)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.05 * torch.randn_like(p))
    args = dpo_args(cfg, tmp_path / f"o-{loss}-{sft}", 1, bf16=False, has_eval=False)
    return (cls or WeightedDPOTrainer)(model=policy, ref_model=AutoModelForImageTextToText.from_pretrained(model_dir),
                                       args=args, train_dataset=dataset(weighted),
                                       processing_class=AutoProcessor.from_pretrained(model_dir), **extra)


def dataset(weighted: bool):
    from povid_cli.train.data import _from_povid, to_hf

    rows = [_from_povid(r) for r in pair_rows(3)]
    for r, w in zip(rows, WEIGHTS):
        r["weight"] = w
    return to_hf(rows, weighted)


def batch_of(trainer):
    return trainer.data_collator([dict(trainer.train_dataset[i]) for i in range(3)])


# -- the weighted loss --------------------------------------------------------------------------------
@pytest.mark.parametrize("loss,sft", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.0),
                                      ("sigmoid", 0.5)])
def test_weighted_loss_equals_a_hand_computation(tmp_path, tiny_vlm, loss, sft):
    """The loss of a batch of 3 pairs weighted 0.2, 1, 0, from the policy's and the reference's log-probs computed
    here (as TRL's own loss tests do); with every weight 1 it is TRL's unweighted loss."""
    import torch
    import torch.nn.functional as F
    from trl import DPOTrainer

    model_dir = tiny_vlm("llava")
    trainer = trainer_for(tmp_path, model_dir, loss, sft)
    batch = batch_of(trainer)
    assert batch["weight"].tolist() == pytest.approx(WEIGHTS)
    trainer.model.train()
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, batch).item()

    ids, mask = batch["input_ids"], batch["completion_mask"]
    kw = {k: v for k, v in batch.items() if k not in ("completion_mask", "weight")}

    def token_logps(model):
        with torch.no_grad():
            logits = model(**kw).logits[:, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]

    pol, ref = token_logps(trainer.model), token_logps(trainer.ref_model)
    (pc, pr), (rc, rr) = pol.sum(1).chunk(2), ref.sum(1).chunk(2)
    beta, w = 0.1, torch.tensor(WEIGHTS)
    delta = (pc - rc) - (pr - rr)
    assert delta.abs().min() > 1e-3  # policy and reference differ: every term matters
    if loss == "sigmoid":
        per = -F.logsigmoid(beta * delta)
    elif loss == "hinge":
        per = torch.relu(1 - beta * delta)
    elif loss == "ipo":
        nc, nr = mask.sum(1).chunk(2)
        per = (((pc - rc) / nc - (pr - rr) / nr) - 1 / (2 * beta)) ** 2
    else:
        per = (-0.8 * F.logsigmoid(beta * delta) + 0.2 * F.logsigmoid(-beta * delta)) / 0.6
    expected = (w * per).mean()
    if sft:
        expected = expected + sft * -(pol[:3] * w[:, None]).sum() / mask[:3, 1:].sum()
    assert got == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)

    # weights of 1: exactly TRL's own loss on the same batch
    ones = {**batch, "weight": torch.ones(3)}
    plain = trainer_for(tmp_path, model_dir, loss, sft, weighted=False, cls=DPOTrainer, policy=trainer.model)
    plain.model.train()
    with torch.no_grad():
        a = trainer.compute_loss(trainer.model, ones).item()
        b = plain.compute_loss(plain.model, {k: v for k, v in batch.items() if k != "weight"}).item()
    assert a == pytest.approx(b, rel=1e-5)
    assert trainer._metrics["train"]["weight"][0] == pytest.approx(sum(WEIGHTS) / 3)


def test_povid_loss_is_weighted_too(tmp_path, tiny_vlm):
    import torch

    from povid_cli.train.losses import PovidDPOTrainer

    model_dir = tiny_vlm("llava")
    trainer = trainer_for(tmp_path, model_dir, "povid", cls=PovidDPOTrainer, povid_weight=0.5)
    batch = batch_of(trainer)
    trainer.model.train()

    def loss(weight):
        trainer._noise_calls = 0  # the same noise every time
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, {**batch, "weight": torch.tensor(weight)}).item()

    assert loss([0.0, 0.0, 0.0]) == 0.0
    ones, halves = loss([1.0, 1.0, 1.0]), loss([0.5, 0.5, 0.5])
    assert ones > 0.1 and halves == pytest.approx(ones / 2, rel=1e-5)  # both terms scale with the weights
    trainer._noise_calls = 0
    with torch.no_grad():
        assert trainer.compute_loss(trainer.model, {k: v for k, v in batch.items() if k != "weight"}).item() == \
            pytest.approx(ones, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("loss,weight", [("sigmoid", 0.0), ("sigmoid", 1.0), ("povid", 0.0)])
def test_zero_weights_leave_the_lora_b_matrices_at_zero(tmp_path, cli, tiny_vlm, loss, weight):
    """LoRA B starts at zero: with every weight 0 (DPO and --sft-weight term alike) no step moves it."""
    from safetensors.torch import load_file

    data = weighted_trl(tmp_path / "trl", pair_rows(8), weight)
    out = tmp_path / "out"
    r = run_ok(cli, [data, "--model", tiny_vlm("qwen2_vl"), "-o", out, "--schedule", "mixed", "--loss", loss,
                     "--weight-column", "weight", "--sft-weight", "0.5", "--max-steps", "2", "--eval-fraction", "0",
                     *FAST])
    assert f"pair weights from weight: {weight:g}..{weight:g}" in r.stderr
    lora_b = {k: v for k, v in load_file(out / "final" / "adapter_model.safetensors").items() if "lora_B" in k}
    assert lora_b
    moved = [k for k, v in lora_b.items() if v.abs().max() > 0]
    assert (moved == []) if weight == 0 else (len(moved) == len(lora_b))
    assert series(metrics(out), "weight") == [weight, weight]


def test_weights_from_pairs_trl_and_items_columns(tmp_path):
    from povid_cli.core.errors import PovidError
    from povid_cli.core.schemas import ITEMS, PAIRS
    from povid_cli.core.store import Dataset
    from povid_cli.train.data import read_pairs

    rows = pair_rows(4)
    for i, r in enumerate(rows):
        r["w"] = float(i)
    data = tmp_path / "data"
    ds = Dataset.open_or_create(str(data))
    ds.commit_shard("filter", "pairs", 0, pa.Table.from_pylist(rows, schema=PAIRS.append(pa.field("w", pa.float64()))),
                    "k")
    assert [r["weight"] for r in read_pairs(str(data), weight_column="w")] == [0.0, 1.0, 2.0, 3.0]
    # an ingested column (items), joined on item_id
    items = [{"id": r["item_id"], "prompt": r["prompt"], "chosen": r["chosen"], "iw": 10.0 + i}
             for i, r in enumerate(rows)]
    ds.commit_shard("ingest", "items", 0, pa.Table.from_pylist(items, schema=ITEMS.append(pa.field("iw", pa.float64()))),
                    "k")
    assert [r["weight"] for r in read_pairs(str(data), weight_column="iw")] == [10.0, 11.0, 12.0, 13.0]
    with pytest.raises(PovidError, match="neither the pairs nor the items .* have that column .*--weight-by"):
        read_pairs(str(data), weight_column="weight")
    rows[1]["w"] = -1.0
    rows[2]["w"] = None
    ds.commit_shard("filter", "pairs", 0, pa.Table.from_pylist(rows, schema=PAIRS.append(pa.field("w", pa.float64()))),
                    "k2")
    with pytest.raises(PovidError, match=r"--weight-column w: 1 missing, 1 invalid weight\(s\) of 4 pairs"):
        read_pairs(str(data), weight_column="w")
    trl = weighted_trl(tmp_path / "trl", pair_rows(2), 0.5)
    assert [r["weight"] for r in read_pairs(str(trl), weight_column="weight")] == [0.5, 0.5]
    with pytest.raises(PovidError, match="--weight-column nope: .* has no such column"):
        read_pairs(str(trl), weight_column="nope")


# -- the curriculum -----------------------------------------------------------------------------------
def ladder(n: int = 12) -> list[dict]:
    """Pairs whose rejected answer changes 1..n words of chosen: similarity falls as i grows (harder first)."""
    rows = pair_rows(n)
    base = "The shape is a round disc drawn in the middle of a plain white square picture".split()
    for i, r in enumerate(rows):
        r["chosen"] = " ".join(base)
        r["rejected"] = " ".join(["blue"] * (i + 1) + base[i + 1:])
    return rows


def test_curriculum_orders_stages_easy_to_hard():
    from povid_cli.core.errors import PovidError, UsageError
    from povid_cli.train.data import _from_trl
    from povid_cli.train.plan import Curriculum, StagePlan, expand, parse_curriculum, split_curriculum

    assert parse_curriculum("3") == Curriculum(3, "similarity", True)
    assert parse_curriculum("2:score=-n_edits") == Curriculum(2, "n_edits", False)
    for bad in ("1", "x", "3:similarity", "3:score="):
        with pytest.raises(UsageError):
            parse_curriculum(bad)
    from povid_cli.export.formats import to_trl

    rows = [_from_trl(r) for r in to_trl(ladder(7))]  # TRL rows have no similarity: computed as filter does
    stages = split_curriculum(StagePlan("text", "text", 3, rows), Curriculum(3), "data")
    assert [s.name for s in stages] == ["text-1", "text-2", "text-3"] and [len(s.rows) for s in stages] == [3, 2, 2]
    assert all(s.epochs == 3 for s in stages)
    lo_hi = [s.difficulty for s in stages]
    assert all(a[0] <= a[1] <= b[0] for a, b in zip(lo_hi, lo_hi[1:]))  # easy (least similar) first
    assert stages[0].rows[0]["rejected"][0]["content"].startswith("blue " * 7)
    by_edits = split_curriculum(StagePlan("all", "all", 1, [{**r, "n_edits": i} for i, r in enumerate(rows)]),
                                Curriculum(2, "n_edits", False), "data")  # fewer edits = harder
    assert [r["n_edits"] for r in by_edits[0].rows] == [6, 5, 4, 3] and by_edits[1].difficulty == (2, 0)
    with pytest.raises(PovidError, match="score=n_edits: 7 of 7 pairs in data have no numeric n_edits"):
        split_curriculum(StagePlan("text", "text", 3, rows), Curriculum(2, "n_edits"), "data")
    with pytest.raises(PovidError, match="only 7 training pair"):
        split_curriculum(StagePlan("text", "text", 3, rows), Curriculum(8), "data")
    plans = [StagePlan("text", "text", 3, rows), StagePlan("image", "image", 1, rows)]
    assert [p.name for p in expand(plans, Curriculum(2), "d")] == ["text-1", "text-2", "image-1", "image-2"]


@pytest.mark.slow
def test_curriculum_stages_start_from_and_reference_the_previous_stage(tmp_path, cli, tiny_vlm):
    data = make_pairs(tmp_path / "data", ladder(16))
    out = tmp_path / "out"
    common = [data, "--model", tiny_vlm("qwen2_vl"), "-o", out, "--schedule", "mixed", "--curriculum", "2",
              "--max-steps", "2", "--eval-fraction", "0.25", "--eval-steps", "2", *FAST]
    r = run_ok(cli, common)
    assert "curriculum: 2 stages, easy to hard by similarity" in r.stderr and "stage 2/2" in r.stderr
    args = json.loads((out / "train_args.json").read_text())
    stages = args["stages"]
    assert [s["name"] for s in stages] == ["all-1", "all-2"] and [s["rows"] for s in stages] == [6, 6]
    assert stages[0]["difficulty"][1] <= stages[1]["difficulty"][0]  # ordered: easy, then hard
    m = metrics(out)
    first, second = (series(m, "eval_text_loss", s) for s in ("all-1", "all-2"))
    assert first[-1] < math.log(2) - 0.01  # stage 1 learned ...
    assert second[0] == pytest.approx(math.log(2), abs=1e-4)  # ... and stage 2's reference is stage 1's model
    # ... which it starts from: its first evaluation scores the answers as stage 1's last one did
    end1, start2 = (series(m, "eval_text_logps/chosen", s) for s in ("all-1", "all-2"))
    assert start2[0] == pytest.approx(end1[-1], abs=1e-4)
    marker = json.loads((out / "final" / "povid_stage.json").read_text())
    assert marker["reference"] == str(out / "stage1-all-1") and marker["difficulty"] == stages[1]["difficulty"]
    r = run_ok(cli, [*common, "--resume"])  # --resume knows the stages
    assert r.stderr.count("already done") == 2
    r = cli(["train", *map(str, common), "--resume", "--curriculum", "3"])
    assert r.exit_code == 1 and "was trained with curriculum='2'" in r.output


# -- the default schedule on data with one kind of pairs ----------------------------------------------
def test_povid_schedule_skips_the_stage_the_data_cannot_feed():
    from povid_cli.train.plan import plan_stages

    lines = []
    rows = [{"kind": "image"}] * 3
    plans = plan_stages("povid", "all", None, rows, "data", lines.append)
    assert [(p.name, p.epochs) for p in plans] == [("image", 1)]
    assert lines == ["no text pairs in data: stage 1 (text pairs) skipped; text pairs come from "
                     "`povid hallucinate DATA` (synth runs it by default)"]


@pytest.mark.slow
def test_train_on_what_synth_made_without_a_vlm(tmp_path, cli, tiny_vlm, sample_dir):
    data = tmp_path / "data"
    r = cli(["synth", sample_dir / "llava.json", "-o", data, "--workers", "1", "--limit", "6"])
    assert r.exit_code == 0 and "sample: skipped" in r.output, r.output
    out = tmp_path / "out"
    r = run_ok(cli, [data, "--model", tiny_vlm("llava"), "-o", out, "--max-steps", "1", "--eval-fraction", "0",
                     *FAST])
    assert ("no image pairs in " in r.stderr and "stage 2 (image pairs) skipped; image pairs come from "
            "`povid distort DATA` then `povid sample DATA --model M` (or `povid synth ... --vlm M`)" in r.stderr)
    assert "stage 1/1: 6 text pairs" in r.stderr
    assert (out / "final" / "adapter_model.safetensors").exists()
    assert [s["name"] for s in json.loads((out / "train_args.json").read_text())["stages"]] == ["text"]
