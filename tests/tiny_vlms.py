"""Tiny, randomly initialised vision-language models for tests, built fully offline.

    from tiny_vlms import build_tiny_vlm     # tests/ is on sys.path under pytest
    path = build_tiny_vlm(tmp_path / "qwen", "qwen2_vl")   # llava | qwen2_vl | qwen2_5_vl | idefics3

In tests prefer the session fixture from conftest.py: `def test_x(tiny_vlm): path = tiny_vlm("llava")`.

Each folder is written with `save_pretrained` (float32 safetensors, tokenizer, processor, chat template,
generation_config with eos/pad and greedy decoding) and loads with `AutoModelForImageTextToText` /
`AutoProcessor` as well as with `vllm.LLM`. The models have ~100-250k parameters; images of any size
are resized by the image processor to 4-16 image tokens. Building one takes well under a second.

The byte-level BPE tokenizer is trained on caption-like English, so decoded (random) outputs look like
words. Everything is deterministic: the same family gives the same weights on every call.
Works with transformers 5.19 (the `.venv-vllm` pin) and 5.23 (`.venv`); transformers/torch are imported
lazily so that collecting a test module that imports this file stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path

FAMILIES = ("llava", "qwen2_vl", "qwen2_5_vl", "idefics3")
TOK_VOCAB = 640  # byte alphabet (256) + specials + ~350 merges: enough for whole common words

# Caption-like text so that merges form real words ("the", "dog", "table", ...).
CORPUS = [
    "Describe this image in detail.", "What is in the picture?", "What colour is the shape in the image?",
    "What is the man doing?", "How many people are there?", "Is there a dog in the image?",
    "A man is riding a horse on the beach.", "A dog is sitting on the grass next to a red car.",
    "A cat is sleeping on a blue table in the kitchen.", "Two people are standing in front of a white building.",
    "A woman holds a cup of coffee at a wooden table.", "The sky is blue and the grass is green.",
    "There is a bus on the street and a bicycle near the tree.", "A red circle and a blue square on white.",
    "The man is wearing a black shirt and a yellow hat.", "A small boat is on the water near the city.",
    "A person is ironing clothes on the back of a yellow taxi.", "A rocket is flying into the sky.",
    "An astronaut in a white suit with a flag.", "A motorcycle is parked on the road.",
    "There are three chairs, a bed, a window and a door in the room.", "The photo shows a camera and a phone.",
    "Yes, there is. No, there is not. I cannot see anything.", "The image shows a large brown horse.",
    "user assistant system image picture photo left right top bottom small large old young",
    "one two three four five 0 1 2 3 4 5 6 7 8 9 , . ? ! ' \"",
]

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>",
                 "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
LLAVA_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
IDEFICS3_SPECIALS = (["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<image>",
                      "<fake_token_around_image>", "<global-img>"]
                     + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)])


def chat_template(image_str: str, im_start: str = "<|im_start|>", im_end: str = "<|im_end|>") -> str:
    """ChatML-style template for string content and list content ({"type": "image" | "image_url" | "text"})."""
    return (
        "{% for message in messages %}" + im_start + "{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for c in message['content'] %}"
        "{% if c['type'] in ['image', 'image_url'] %}" + image_str +
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endif %}" + im_end + "\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}" + im_start + "assistant\n{% endif %}"
    )


QWEN_TEMPLATE = chat_template("<|vision_start|><|image_pad|><|vision_end|>")
LLAVA_TEMPLATE = chat_template("<image>\n")
# Idefics3Processor expands "<image>" itself into <fake_token_around_image><global-img><image>*N...
IDEFICS3_TEMPLATE = chat_template("<image>", im_end="<end_of_utterance>")


def _tokenizer(specials: list[str], template: str, eos: str, pad: str = "<|endoftext|>", bos: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOK_VOCAB, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token=eos, pad_token=pad, bos_token=bos, unk_token=None,
        additional_special_tokens=[s for s in specials if s not in (eos, pad, bos)],
        chat_template=template, model_max_length=2048,
    )


def _cls(name: str, module: str):
    """A transformers class by name; the `*Pil` image processors are looked up with a fallback."""
    import importlib

    import transformers

    try:
        return getattr(transformers, name)
    except (AttributeError, ImportError):
        return getattr(importlib.import_module(f"transformers.models.{module}"), name)


def _image_processor(names: list[str], module: str, **kw):
    """First image processor class that exists (Pil variants avoid the torchvision dependency)."""
    for n in names:
        try:
            return _cls(n, module)(**kw)
        except (AttributeError, ImportError):
            continue
    raise ImportError(f"none of {names} in this transformers")


def _qwen(family: str):
    tok = _tokenizer(QWEN_SPECIALS, QWEN_TEMPLATE, eos="<|im_end|>")
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    prefix = "Qwen2VL" if family == "qwen2_vl" else "Qwen2_5_VL"
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096, rms_norm_eps=1e-6,
                # mrope_section sums to head_dim / 2 = 16
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)
    if family == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, in_channels=3,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    else:
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                      window_size=56, fullatt_block_indexes=[1], tokens_per_second=2)
    cfg = _cls(f"{prefix}Config", family)(
        text_config=text, vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False,
    )
    model = _cls(f"{prefix}ForConditionalGeneration", family)(cfg)
    # 56x56 .. 112x112 pixels -> 4..16 image tokens after the 2x2 merge
    kw = dict(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112},
              patch_size=14, temporal_patch_size=2, merge_size=2)
    ip = _image_processor(["Qwen2VLImageProcessorPil", "Qwen2VLImageProcessor"], "qwen2_vl", **kw)
    # the processor insists on a video processor (needs an importable torchvision)
    vp = _cls("Qwen2VLVideoProcessor", "qwen2_vl")(**kw)
    proc = _cls(f"{prefix}Processor", family)(image_processor=ip, tokenizer=tok, video_processor=vp,
                                               chat_template=QWEN_TEMPLATE)
    return model, tok, proc


def _llava(family: str):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = _tokenizer(LLAVA_SPECIALS, LLAVA_TEMPLATE, eos="<|im_end|>")
    ids = {s: tok.convert_tokens_to_ids(s) for s in LLAVA_SPECIALS}
    vcfg = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=2, image_size=56, patch_size=14, projection_dim=64)
    tcfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                       bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                       pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)
    cfg = LlavaConfig(vision_config=vcfg, text_config=tcfg, image_token_index=ids["<image>"],
                      vision_feature_layer=-2, vision_feature_select_strategy="default",
                      projector_hidden_act="gelu", image_seq_length=16,
                      pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)
    model = LlavaForConditionalGeneration(cfg)
    # any image -> resize shortest edge to 56, center-crop 56x56 -> 4x4 patches = 16 image tokens
    ip = _image_processor(["CLIPImageProcessorPil", "CLIPImageProcessor"], "clip",
                          size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                          vision_feature_select_strategy="default", image_token="<image>",
                          num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    return model, tok, proc


def _idefics3(family: str):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor

    tok = _tokenizer(IDEFICS3_SPECIALS, IDEFICS3_TEMPLATE, eos="<end_of_utterance>", bos="<|im_start|>")
    cfg = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=56, patch_size=14),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
    )
    model = Idefics3ForConditionalGeneration(cfg)
    # no splitting: every image becomes one 56x56 global image -> 16 patches / scale_factor^2 = 4 tokens
    ip = _image_processor(["Idefics3ImageProcessorPil", "Idefics3ImageProcessor"], "idefics3",
                          size={"longest_edge": 56}, max_image_size={"longest_edge": 56}, do_image_splitting=False)
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=IDEFICS3_TEMPLATE)
    return model, tok, proc


_BUILDERS = {"llava": _llava, "qwen2_vl": _qwen, "qwen2_5_vl": _qwen, "idefics3": _idefics3}


def _prefer_words(model, tok) -> None:
    """Zero the output rows of tokens that are not printable ASCII text (stray bytes, image/pad/chat
    specials; eos is kept): a zero row gives logit 0 while random word rows score above it, so greedy
    and low-temperature samples decode to word-like text and never emit image placeholders."""
    import torch

    keep = {tok.eos_token_id}
    specials = set(tok.all_special_ids)
    bad = [i for i in range(len(tok)) if i not in keep and (
        i in specials or not (t := tok.decode([i])).strip() or not all(32 <= ord(ch) < 127 for ch in t))]
    with torch.no_grad():
        model.get_output_embeddings().weight[bad] = 0.0


def _rename_llava_vision_tower(out: Path) -> None:
    """transformers 5.x saves the CLIP tower as `vision_tower.embeddings...`; vLLM (like the llava-hf
    checkpoints) only loads `vision_tower.vision_model.*`. transformers loads both layouts."""
    from safetensors.torch import load_file, save_file

    path = out / "model.safetensors"
    sd = load_file(str(path))
    pre, full = "vision_tower.", "vision_tower.vision_model."
    sd = {(full + k[len(pre):] if k.startswith(pre) and not k.startswith(full) else k): v for k, v in sd.items()}
    save_file(sd, str(path), metadata={"format": "pt"})


def build_tiny_vlm(out_dir, family: str = "qwen2_vl") -> Path:
    """Build a tiny random `family` VLM and save it to `out_dir` (created); returns the folder."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny VLM family {family!r}; choose one of {', '.join(FAMILIES)}")
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model, tok, proc = _BUILDERS[family](family)
    model = model.to(torch.float32).eval()
    _prefer_words(model, tok)
    gc = model.generation_config
    gc.do_sample, gc.eos_token_id, gc.pad_token_id = False, tok.eos_token_id, tok.pad_token_id
    gc.bos_token_id = tok.bos_token_id
    model.save_pretrained(str(out))
    if family == "llava":
        _rename_llava_vision_tower(out)
    tok.save_pretrained(str(out))
    proc.save_pretrained(str(out))
    return out


if __name__ == "__main__":  # python tests/tiny_vlms.py OUT_DIR FAMILY
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(build_tiny_vlm(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "qwen2_vl"))
