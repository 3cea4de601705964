"""`povid train`: DPO with TRL on tiny random VLMs (CPU), from a povid dataset or a TRL Parquet export.

The data is easy on purpose (the rejected answer is a fixed sentence that has nothing to do with the image),
so a few LoRA steps at a high learning rate move the eval loss down from ln 2 and the reward margin up.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.train  # the tests that train are also marked slow

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
REJECTED = {"text": "I cannot see anything.", "image": "No, there is not."}
# small LoRA, high learning rate, a few steps: enough to see learning on the easy pairs
FAST = ["--lora-r", "8", "--lora-alpha", "16", "--lr", "5e-3", "--batch-size", "2", "--logging-steps", "1",
        "--max-length", "256", "--seed", "0"]


def shape_png(colour: str, size: int = 64) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(im).ellipse((size // 5, size // 5, 4 * size // 5, 4 * size // 5), fill=COLORS[colour])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def pair_rows(n: int = 16, kinds=("text", "image"), size: int = 64) -> list[dict]:
    cols = list(COLORS)
    rows = []
    for i in range(n):
        colour, kind = cols[i % 4], kinds[(i // 4) % len(kinds)]
        rows.append({"id": f"p{i}", "item_id": f"i{i}", "kind": kind, "prompt": "What colour is the shape in the image?",
                     "chosen": f"The shape is {colour}.", "rejected": REJECTED[kind],
                     "image": {"bytes": shape_png(colour, size), "path": f"{colour}.png"},
                     "variant": "diffusion" if kind == "image" else None, "task": "vqa", "source": "test",
                     "source_id": str(i)})
    return rows


def make_pairs(path: Path, rows: list[dict]) -> Path:
    """A povid dataset holding only `pairs` (what `povid filter` writes)."""
    import pyarrow as pa

    from povid_cli.core.schemas import PAIRS
    from povid_cli.core.store import Dataset, digest

    ds = Dataset.open_or_create(str(path))
    ds.write_shard("pairs", 0, pa.Table.from_pylist(rows, schema=PAIRS), digest([r["id"] for r in rows]))
    return path


def make_trl_parquet(path: Path, rows: list[dict]) -> Path:
    """What `povid export --format trl` writes: images list, conversational prompt/chosen/rejected, kind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from povid_cli.export.formats import TRL, to_trl

    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(to_trl(rows), schema=TRL), path / "train.parquet")
    return path


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def series(rows: list[dict], key: str, stage: str | None = None) -> list[float]:
    return [r[key] for r in rows if key in r and (stage is None or r["stage"] == stage)]


def run_ok(cli, args):
    r = cli(["train", *map(str, args)])
    assert r.exit_code == 0, r.output
    return r


# -- learning ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("family,source", [("qwen2_vl", "pairs"), ("llava", "pairs"), ("idefics3", "trl")])
def test_eval_loss_starts_at_ln2_and_falls(tmp_path, cli, tiny_vlm, family, source):
    rows = pair_rows(16)
    data = make_pairs(tmp_path / "data", rows) if source == "pairs" else make_trl_parquet(tmp_path / "trl", rows)
    out = tmp_path / "out"
    run_ok(cli, [data, "--model", tiny_vlm(family), "-o", out, "--schedule", "mixed", "--max-steps", "6",
                 "--eval-fraction", "0.25", "--eval-steps", "6", *FAST])
    m = metrics(out)
    for kind in ("text", "image"):
        losses = series(m, f"eval_{kind}_loss")
        margins = series(m, f"eval_{kind}_rewards/margins")
        assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference before training
        assert losses[-1] < losses[0] - 0.01, losses
        assert margins[0] == pytest.approx(0.0, abs=1e-4) and margins[-1] > margins[0] + 0.05, margins
        assert series(m, f"eval_{kind}_rewards/accuracies")[-1] > 0.5
    assert series(m, "loss")  # training logs are there too
    final = out / "final"
    assert (final / "adapter_config.json").exists() and (final / "povid_stage.json").exists()
    assert (final / "processor_config.json").exists() or (final / "preprocessor_config.json").exists()
    assert not (final / "ref").exists()
    assert (out / "metrics.png").stat().st_size > 1000


@pytest.mark.slow
def test_lora_adapter_reloads_and_merges(tmp_path, cli, tiny_vlm):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = tiny_vlm("qwen2_vl")
    data = make_pairs(tmp_path / "data", pair_rows(8))
    out = tmp_path / "out"
    run_ok(cli, [data, "--model", model_dir, "-o", out, "--schedule", "mixed", "--max-steps", "3",
                 "--eval-fraction", "0", "--merge", *FAST])
    proc = AutoProcessor.from_pretrained(out / "final")
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    from PIL import Image

    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    batch = proc(text=[text], images=[Image.open(io.BytesIO(shape_png("red")))], return_tensors="pt")
    with torch.no_grad():
        base_logits = AutoModelForImageTextToText.from_pretrained(model_dir).eval()(**batch).logits
        peft = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(model_dir), out / "final").eval()
        lora_b = [p for n, p in peft.named_parameters() if "lora_B" in n]
        assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: trained weights came back
        assert not any("vision" in n or "visual" in n for n, _ in peft.named_parameters() if "lora_" in n)
        peft_logits = peft(**batch).logits
        merged_logits = AutoModelForImageTextToText.from_pretrained(out / "merged").eval()(**batch).logits
    assert not torch.allclose(peft_logits, base_logits)
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-4, rtol=1e-4)
    # `povid merge` does the same from the adapter folder alone (base named in adapter_config.json)
    r = cli(["merge", out / "final", "-o", tmp_path / "merged2"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "merged2" / "config.json").exists()


@pytest.mark.slow
def test_povid_loss_runs_and_learns(tmp_path, cli, tiny_vlm):
    data = make_pairs(tmp_path / "data", pair_rows(16, kinds=("image",)))
    out = tmp_path / "out"
    run_ok(cli, [data, "--model", tiny_vlm("qwen2_vl"), "-o", out, "--schedule", "mixed", "--loss", "povid",
                 "--max-steps", "6", "--eval-fraction", "0.25", "--eval-steps", "6", *FAST])
    m = metrics(out)
    losses = series(m, "eval_image_loss")
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4) and losses[-1] < losses[0] - 0.01, losses
    # the second rejected answer (argmax under the noised image) is scored and pushed down too
    povid_margins = series(m, "eval_image_povid/rewards/margins")
    assert povid_margins[0] == pytest.approx(0.0, abs=1e-4) and povid_margins[-1] > 0, povid_margins
    assert series(m, "povid_loss") and series(m, "dpo_loss")


@pytest.mark.slow
def test_povid_schedule_runs_both_stages_from_stage1(tmp_path, cli, tiny_vlm):
    data = make_pairs(tmp_path / "data", pair_rows(16))
    out = tmp_path / "out"
    r = run_ok(cli, [data, "--model", tiny_vlm("llava"), "-o", out, "--max-steps", "2", "--eval-fraction", "0.25",
                     "--eval-steps", "2", *FAST])
    assert "stage 1/2" in r.stderr and "stage 2/2" in r.stderr
    m = metrics(out)
    assert [r["stage"] for r in m][0] == "text" and m[-1]["stage"] == "image"
    assert max(r["global_step"] for r in m if r["stage"] == "text") == 2
    assert max(r["global_step"] for r in m if r["stage"] == "image") == 4
    stage1_text = series(m, "eval_text_loss", "text")
    assert stage1_text[-1] < math.log(2) - 0.01  # stage 1 learned
    # stage 2 starts from stage 1 with stage 1 as its reference: policy == reference again, loss exactly ln 2
    assert series(m, "eval_text_loss", "image")[0] == pytest.approx(math.log(2), abs=1e-4)
    assert json.loads((out / "stage1-text" / "povid_stage.json").read_text())["steps"] == 2
    assert (out / "final" / "adapter_config.json").exists()
    args = json.loads((out / "train_args.json").read_text())
    assert [s["name"] for s in args["stages"]] == ["text", "image"] and args["stages"][0]["epochs"] == 3


@pytest.mark.slow
def test_resume_continues_from_checkpoint(tmp_path, cli, tiny_vlm):
    from safetensors.torch import load_file

    data = make_pairs(tmp_path / "data", pair_rows(16))
    out = tmp_path / "out"
    common = [data, "--model", tiny_vlm("idefics3"), "-o", out, "--schedule", "mixed", "--max-steps", "4",
              "--save-steps", "2", "--eval-fraction", "0", *FAST]
    run_ok(cli, common)
    whole = load_file(out / "final" / "adapter_model.safetensors")
    # a run killed after its step-2 checkpoint: no final weights, no later checkpoint
    import shutil

    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoints" / "all" / "checkpoint-4")
    before = len(metrics(out))
    r = cli(["train", *map(str, common)])
    assert r.exit_code != 0 and "--resume" in r.output  # never silently overwrites a run
    r = run_ok(cli, [*common, "--resume"])
    assert "resuming from" in r.stderr
    resumed = [row for row in metrics(out)[before:] if "loss" in row]
    assert [row["step"] for row in resumed] == [3, 4]  # steps 1-2 came from the checkpoint
    again = load_file(out / "final" / "adapter_model.safetensors")
    assert whole.keys() == again.keys()
    for k in whole:
        assert (whole[k] - again[k]).abs().max() < 1e-4, k  # same weights as the uninterrupted run
    r = run_ok(cli, [*common, "--resume"])  # everything done: nothing to train
    assert "already done" in r.stderr


# -- the token budget -------------------------------------------------------------------------------
def test_token_budget_resizes_dynamic_images_and_skips_fixed_ones(tiny_vlm):
    from transformers import AutoProcessor

    from povid_cli.train.data import fit_to_budget, read_pairs, row_length  # noqa: F401

    rows = [{"images": [{"bytes": shape_png("red", 112), "path": None}],
             "prompt": [{"role": "user", "content": "What colour is the shape in the image?"}],
             "chosen": [{"role": "assistant", "content": "The shape is red."}],
             "rejected": [{"role": "assistant", "content": "I cannot see anything."}], "kind": "image"}]
    qwen = AutoProcessor.from_pretrained(tiny_vlm("qwen2_vl"))  # 112 px -> 16 image tokens, 56 px -> 4
    _, full = fit_to_budget(rows, qwen, None)
    kept, b = fit_to_budget(rows, qwen, 10_000)
    assert (b.fit, b.resized, b.skipped) == (1, 0, 0)
    need = b.longest
    kept, b = fit_to_budget(rows, qwen, need - 6)
    assert (b.fit, b.resized, b.skipped) == (0, 1, 0) and len(kept) == 1
    from PIL import Image

    assert Image.open(io.BytesIO(kept[0]["images"][0]["bytes"])).width < 112
    kept, b = fit_to_budget(rows, qwen, 10)  # not even the text fits
    assert (b.fit, b.resized, b.skipped) == (0, 0, 1) and kept == []
    llava = AutoProcessor.from_pretrained(tiny_vlm("llava"))  # always 16 image tokens: shrinking cannot help
    _, b = fit_to_budget(rows, llava, 10_000)
    kept, b = fit_to_budget(rows, llava, b.longest - 1)
    assert (b.resized, b.skipped) == (0, 1) and "skipped" in b.line()


@pytest.mark.slow
def test_too_long_rows_do_not_crash_training(tmp_path, cli, tiny_vlm):
    rows = pair_rows(8, kinds=("image",), size=112)
    rows[0]["chosen"] = "The shape is red. " * 40  # longer than the budget whatever the image size
    data = make_pairs(tmp_path / "data", rows)
    out = tmp_path / "out"
    r = run_ok(cli, [data, "--model", tiny_vlm("qwen2_vl"), "-o", out, "--schedule", "mixed", "--max-steps", "1",
                     "--eval-fraction", "0", *FAST[:-4], "--max-length", "40"])  # 112 px: 44 tokens, 84 px: 37
    assert "1 skipped" in r.stderr and "7 resized down" in r.stderr, r.stderr


# -- inputs -----------------------------------------------------------------------------------------
def test_reads_povid_pairs_and_trl_parquet_alike(tmp_path):
    from povid_cli.train.data import read_pairs

    rows = pair_rows(4)
    a = read_pairs(str(make_pairs(tmp_path / "data", rows)))
    b = read_pairs(str(make_trl_parquet(tmp_path / "trl", rows)))
    c = read_pairs(str(tmp_path / "trl" / "train.parquet"))
    assert a == b == c
    assert a[0]["prompt"] == [{"role": "user", "content": "What colour is the shape in the image?"}]
    assert a[0]["chosen"] == [{"role": "assistant", "content": "The shape is red."}]
    assert a[0]["images"][0]["bytes"] == rows[0]["image"]["bytes"] and a[0]["kind"] == "text"


def test_eval_split_holds_out_each_kind():
    from povid_cli.train.data import split_eval

    rows = [{"kind": "text", "i": i} for i in range(20)] + [{"kind": "image", "i": i} for i in range(3)]
    train, evals = split_eval(rows, 0.1, seed=0)
    assert len(evals["text"]) == 2 and len(evals["image"]) == 1 and len(train) == 20
    assert split_eval(rows, 0.1, seed=0) == (train, evals)
    assert split_eval(rows, 0.0, seed=0) == (rows, {})


def test_noise_follows_the_diffusion_schedule():
    import torch

    from stages.diffusion import coefficients
    from povid_cli.train.losses import add_noise_torch

    x = torch.full((2, 3, 64, 64), 0.5)
    y = add_noise_torch(x, 500, torch.Generator().manual_seed(0))
    a, s = coefficients(500)
    assert y.mean().item() == pytest.approx(0.5 * a, abs=0.01)
    assert y.std().item() == pytest.approx(s, rel=0.02)
    # Idefics3-style padding images (all zeros) stay zeros: the model finds real images by that
    x5 = torch.zeros(1, 2, 3, 8, 8)
    x5[0, 0] = 1.0
    y5 = add_noise_torch(x5, 500)
    assert (y5[0, 1] == 0).all() and not (y5[0, 0] == 1).all()


# -- errors: one clear line each --------------------------------------------------------------------
def test_missing_train_extra(tmp_path, cli, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "trl", None)
    r = cli(["train", tmp_path, "--model", "m", "-o", tmp_path / "out"])
    assert r.exit_code == 1 and "pip install 'povid[train]'" in r.output and "Traceback" not in r.output


def test_bf16_without_gpu(tmp_path, cli, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = cli(["train", tmp_path, "--model", "m", "-o", tmp_path / "out", "--bf16"])
    assert r.exit_code == 2 and "--bf16 needs a CUDA GPU" in r.output


def test_unknown_model_family(tmp_path, cli):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt2")
    data = make_pairs(tmp_path / "data", pair_rows(2))
    r = cli(["train", data, "--model", tmp_path / "gpt2", "-o", tmp_path / "out"])
    assert r.exit_code == 1 and "unknown model family 'gpt2'" in r.output


def test_no_pairs_of_the_asked_kind(tmp_path, cli, tiny_vlm):
    data = make_pairs(tmp_path / "data", pair_rows(4, kinds=("text",)))
    r = cli(["train", data, "--model", tiny_vlm("qwen2_vl"), "-o", tmp_path / "out", "--kind", "image"])
    assert r.exit_code == 1 and "has no image pairs (it has: text)" in r.output
    r = cli(["train", data, "--model", tiny_vlm("qwen2_vl"), "-o", tmp_path / "out"])  # povid schedule: stage 2
    assert r.exit_code == 1 and "no image pairs" in r.output and "--schedule mixed" in r.output
    empty = tmp_path / "empty"
    from povid_cli.core.store import Dataset

    Dataset.open_or_create(str(empty))
    r = cli(["train", empty, "--model", tiny_vlm("qwen2_vl"), "-o", tmp_path / "out"])
    assert r.exit_code == 1 and "has no pairs yet" in r.output


def test_shipped_accelerate_configs(cli):
    from accelerate.commands.config.config_args import load_config_from_file

    r = cli(["train", "--configs"])
    assert r.exit_code == 0
    paths = dict(line.split("\t") for line in r.stdout.strip().splitlines())
    assert set(paths) == {"ddp", "zero2", "zero3", "fsdp"}
    kinds = {name: str(load_config_from_file(p).distributed_type) for name, p in paths.items()}
    assert kinds == {"ddp": "DistributedType.MULTI_GPU", "zero2": "DistributedType.DEEPSPEED",
                     "zero3": "DistributedType.DEEPSPEED", "fsdp": "DistributedType.FSDP"}
    assert load_config_from_file(paths["zero3"]).deepspeed_config["zero_stage"] == 3


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "idefics3"])
def test_povid_rejected_is_the_argmax_under_the_noised_image(tmp_path, tiny_vlm, family):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig

    from povid_cli.train.losses import PovidDPOTrainer, add_noise_torch
    from povid_cli.train.data import _from_povid, to_hf

    model_dir = tiny_vlm(family)
    ds = to_hf([_from_povid(r) for r in pair_rows(4)])
    args = DPOConfig(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=False, report_to=[], max_length=256,
                     gradient_checkpointing=False, per_device_train_batch_size=2)
    trainer = PovidDPOTrainer(model=AutoModelForImageTextToText.from_pretrained(model_dir), args=args,
                              train_dataset=ds, processing_class=AutoProcessor.from_pretrained(model_dir))
    batch = trainer.data_collator([dict(ds[0]), dict(ds[1])])
    trainer._noise_calls = 5
    out = trainer.hallucinated_batch(trainer.model, batch)
    ids, mask = batch["input_ids"], batch["completion_mask"].bool()
    hal = out["input_ids"][2:]
    assert torch.equal(out["input_ids"][:2], ids[:2])  # the chosen half is untouched
    assert torch.equal(hal[~mask[:2]], ids[:2][~mask[:2]])  # prompt (and image tokens) untouched
    assert torch.equal(out["completion_mask"], torch.cat([batch["completion_mask"][:2]] * 2))
    assert torch.equal(out["pixel_values"], batch["pixel_values"])  # scored under the clean image
    # the same noise, replayed: the answer tokens are the argmax of the teacher-forced chosen answer
    trainer._noise_calls = 5
    noisy = add_noise_torch(batch["pixel_values"], 500, trainer._generator(batch["pixel_values"].device))
    kw = {k: v for k, v in batch.items() if k != "completion_mask"}
    with torch.no_grad():
        logits = trainer.model(**{**kw, "pixel_values": noisy}).logits
    expected = logits[:2, :-1].argmax(-1)
    assert torch.equal(hal[:, 1:][mask[:2, 1:]], expected[mask[:2, 1:]])
    assert not torch.equal(hal, ids[:2])
    assert PovidDPOTrainer.chosen_half(kw, 2) is not None  # the noised forward runs on the chosen half only


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(tmp_path, tiny_vlm):
    """DDP with 2 CPU processes (gloo): the same command line as on 8 GPUs, minus the config file."""
    import os
    import subprocess
    import sys

    data = make_pairs(tmp_path / "data", pair_rows(16))
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "POVID_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "povid_cli", "train", str(data),
           "--model", str(tiny_vlm("qwen2_vl")), "-o", str(out), "--schedule", "mixed", "--max-steps", "2",
           "--eval-fraction", "0.25", "--eval-steps", "2", "--no-bf16", *FAST]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = metrics(out)
    train = [row for row in m if "loss" in row]
    assert [row["step"] for row in train] == [1, 2]  # one line per step: only rank 0 writes
    assert train[0]["num_tokens"] > 0 and m[-1]["epoch"] > 0
    assert series(m, "eval_text_loss")[0] == pytest.approx(math.log(2), abs=1e-4)
    assert (out / "final" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_full_finetuning_schedule_uses_stage1_as_reference(tmp_path, cli, tiny_vlm):
    from transformers import AutoModelForImageTextToText

    data = make_pairs(tmp_path / "data", pair_rows(16))
    out = tmp_path / "out"
    args = [data, "--model", tiny_vlm("idefics3"), "-o", out, "--full", "--max-steps", "2", "--eval-fraction",
            "0.25", "--eval-steps", "2", *FAST[4:]]
    run_ok(cli, args)
    m = metrics(out)
    assert series(m, "eval_text_loss", "text")[-1] < math.log(2)
    assert series(m, "eval_text_loss", "image")[0] == pytest.approx(math.log(2), abs=1e-4)
    assert not (out / "final" / "adapter_config.json").exists()
    AutoModelForImageTextToText.from_pretrained(out / "final")  # a whole model, with its processor
    assert (out / "final" / "processor_config.json").exists()
    r = cli(["train", *map(str, args[:-len(FAST[4:])]), "--resume", "--loss", "ipo"])
    assert r.exit_code == 1 and "was trained with loss='sigmoid'" in r.output


def test_unreadable_images_are_skipped_and_counted(tiny_vlm):
    from transformers import AutoProcessor

    from povid_cli.train.data import _from_povid, fit_to_budget

    rows = [_from_povid(r) for r in pair_rows(3)]
    rows[1]["images"][0]["bytes"] = b"not an image"
    kept, b = fit_to_budget(rows, AutoProcessor.from_pretrained(tiny_vlm("llava")), 256)
    assert len(kept) == 2 and b.unreadable == 1 and "1 skipped (unreadable image)" in b.line()


@pytest.mark.parametrize("loss", ["sigmoid", "povid"])
def test_sft_weight_adds_alpha_times_the_chosen_nll(tmp_path, tiny_vlm, loss):
    """--sft-weight A: the loss is the preference loss + A x the mean next-word loss over the chosen tokens
    (RPO / TRL's rpo_alpha), for plain DPO and for --loss povid alike."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOTrainer

    from povid_cli.train.data import _from_povid, to_hf
    from povid_cli.train.losses import PovidDPOTrainer
    from povid_cli.train.trainer import TrainConfig, dpo_args

    model_dir = tiny_vlm("llava")
    ds = to_hf([_from_povid(r) for r in pair_rows(4)])
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)

    def loss_with(weight: float):
        cfg = TrainConfig(data="-", model=str(model_dir), output=str(tmp_path), loss=loss, sft_weight=weight,
                          full=True, batch_size=2, max_length=256, learning_rate=1e-3)
        args = dpo_args(cfg, tmp_path / f"o{weight}", 1, bf16=False, has_eval=False)
        cls, extra = (PovidDPOTrainer, {"povid_weight": 0.5}) if loss == "povid" else (DPOTrainer, {})
        trainer = cls(model=model, ref_model=AutoModelForImageTextToText.from_pretrained(model_dir), args=args,
                      train_dataset=ds, processing_class=processor, **extra)
        batch = trainer.data_collator([dict(ds[0]), dict(ds[1])])
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, batch).item(), batch

    plain, batch = loss_with(0.0)
    weighted, _ = loss_with(0.5)
    # the chosen half's next-word loss, computed by hand
    mask = batch["completion_mask"][:2, 1:].bool()
    kw = {k: v[:2] for k, v in batch.items() if k != "completion_mask"}  # LLaVA: one image per row
    with torch.no_grad():
        logits = model(**kw).logits[:, :-1]
    logps = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:2, 1:, None]).squeeze(-1)
    nll = -logps[mask].mean().item()
    assert nll > 1.0  # a random model: the term is not negligible, so the test can fail
    assert weighted - plain == pytest.approx(0.5 * nll, rel=1e-4, abs=1e-5)
