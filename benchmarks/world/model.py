"""The world's tiny VLM: a `LlavaForConditionalGeneration` (CLIP ViT tower -> MLP projector -> Llama) with the
word-level tokenizer, saved so `AutoModelForImageTextToText` / `AutoProcessor` (and vLLM) load it.

    path = build_world_vlm(out_dir, ModelConfig())     # random init; SFT trains it from scratch

A 64x64 image is cut into 16x16 patches: 16 image tokens (the CLS token is dropped, LLaVA's "default"
strategy); the last vision layer feeds the projector (with 2 layers, LLaVA's usual -2 would skip half
the tower). The image processor normalises with CLIP's mean/std, which the prototype found mattered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 64
    patch_size: int = 16
    d_vision: int = 96
    vision_layers: int = 2
    d_text: int = 96
    text_layers: int = 2
    heads: int = 4
    seed: int = 0

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_world_vlm(out_dir: str | Path, cfg: ModelConfig = ModelConfig()) -> Path:
    """Build the randomly initialised model + processor and save them in `out_dir`; returns the folder."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    from benchmarks.world.tokenizer import CHAT_TEMPLATE, IMAGE, build_tokenizer

    if cfg.image_size % cfg.patch_size:
        raise ValueError("image_size must be a multiple of patch_size")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    torch.manual_seed(cfg.seed)
    vcfg = CLIPVisionConfig(hidden_size=cfg.d_vision, intermediate_size=2 * cfg.d_vision,
                            num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.heads,
                            image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.d_vision)
    tcfg = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.d_text, intermediate_size=int(8 / 3 * cfg.d_text),
                       num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.heads,
                       num_key_value_heads=cfg.heads, max_position_embeddings=256,
                       bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       tie_word_embeddings=False)
    mcfg = LlavaConfig(vision_config=vcfg, text_config=tcfg, image_token_index=tok.convert_tokens_to_ids(IMAGE),
                       vision_feature_layer=-1, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu", image_seq_length=cfg.image_tokens,
                       pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlavaForConditionalGeneration(mcfg).to(torch.float32).eval()
    gc = model.generation_config
    gc.do_sample, gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = False, tok.eos_token_id, tok.pad_token_id, None
    gc.max_new_tokens = 48
    ip = CLIPImageProcessor(size={"shortest_edge": cfg.image_size},
                            crop_size={"height": cfg.image_size, "width": cfg.image_size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=cfg.patch_size,
                          vision_feature_select_strategy="default", image_token=IMAGE,
                          num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
    model.save_pretrained(str(out))
    vllm_layout(out)
    proc.save_pretrained(str(out))
    return out


def vllm_layout(folder: str | Path) -> None:
    """transformers 5.x saves the CLIP tower as `vision_tower.embeddings...`; vLLM (like the llava-hf
    checkpoints) loads only `vision_tower.vision_model.*`. transformers reads both layouts."""
    from safetensors.torch import load_file, save_file

    path = Path(folder) / "model.safetensors"
    sd = load_file(str(path))
    pre, full = "vision_tower.", "vision_tower.vision_model."
    sd = {(full + k[len(pre):] if k.startswith(pre) and not k.startswith(full) else k): v for k, v in sd.items()}
    save_file(sd, str(path), metadata={"format": "pt"})


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
