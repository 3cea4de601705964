"""An exported `trl` dataset goes straight into trl.DPOTrainer with a VLM processor: one DPO step runs."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.train, pytest.mark.slow]


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_one_dpo_step_on_a_trl_export(cli, sample_dir, tmp_path, tiny_vlm, family):
    torch = pytest.importorskip("torch")
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    # POVID-format input: items that come with a rejected answer are text pairs before `filter` exists.
    recs = json.loads((sample_dir / "llava.json").read_text())[:4]
    for rec in recs:
        rec["rejected_conversations"] = [rec["conversations"][0],
                                         {"from": "gpt", "value": "A dog is sitting on the grass next to a red car."}]
    (tmp_path / "povid.json").write_text(json.dumps(recs))
    data, out = tmp_path / "data", tmp_path / "trl"
    assert cli(["ingest", tmp_path / "povid.json", "--image-root", sample_dir, "-o", data, "--workers", "1"]).exit_code == 0
    r = cli(["export", data, "-o", out, "--format", "trl"])
    assert r.exit_code == 0, r.output

    train = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    assert isinstance(train.features["images"], datasets.List)
    assert isinstance(train.features["images"].feature, datasets.Image)

    path = tiny_vlm(family)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(str(path))
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "ckpt"), per_device_train_batch_size=2, max_steps=1, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False,
        max_length=256, beta=0.1, dataloader_num_workers=0, seed=0,
    )
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=train, processing_class=processor)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()

    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs
    assert torch.isfinite(torch.tensor(logs[0]["loss"]))
    assert "rewards/margins" in logs[0]
    changed = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p.detach(), before[n])]
    assert changed, "the DPO step did not update any weight"
