"""Which VLM families povid knows, and how to talk to them (shared by `sample` and `train`).

A family is a Hugging Face `model_type` whose processor has a chat template that places one image
in a user turn. Prompts are always built with the model's own chat template; this module only
names the families and builds the messages:

    >>> from povid_cli.backends.families import detect_family, user_messages, chat_prompt
    >>> detect_family("Qwen/Qwen2-VL-2B-Instruct")          # a local folder, a hub name or a config
    'qwen2_vl'
    >>> chat_prompt(processor, "Describe this image.")        # '<|im_start|>user\\n<|vision_start|>...'

`detect_family` raises `UnsupportedModelError` (one line naming the supported families) for anything
else, before any weights are loaded.
"""

from __future__ import annotations

import json
import os
from typing import Any

from povid_cli.core.errors import PovidError

# model_type -> the name users see. Each is tested with a tiny random model (tests/tiny_vlms.py),
# through transformers and vLLM.
FAMILIES: dict[str, str] = {
    "llava": "LLaVA",
    "qwen2_vl": "Qwen2-VL",
    "qwen2_5_vl": "Qwen2.5-VL",
    "idefics3": "Idefics3",
}
SUPPORTED: tuple[str, ...] = tuple(FAMILIES)


class UnsupportedModelError(PovidError):
    """A model whose family povid does not support (or whose config cannot be read)."""


def supported_line() -> str:
    return ", ".join(f"{k} ({v})" for k, v in FAMILIES.items())


def _model_type(config: Any) -> str | None:
    if isinstance(config, dict):
        return config.get("model_type")
    return getattr(config, "model_type", None)


def looks_like_path(model: str) -> bool:
    """A local path that is missing (a hub id is `name` or `org/name`, never absolute or ./relative)."""
    return not os.path.exists(model) and (os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1)


def load_config(model: str) -> dict:
    """config.json of a local folder or of a hub model (from the local HF cache when offline)."""
    path = os.path.join(model, "config.json")
    if os.path.isdir(model):
        if not os.path.exists(path):
            raise UnsupportedModelError(f"{model} has no config.json: is it a Hugging Face model folder?")
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    if looks_like_path(model):
        raise UnsupportedModelError(f"model folder {model} does not exist")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - comes with transformers
        raise UnsupportedModelError(f"{model}: not a local folder, and huggingface_hub is not installed to fetch it") from None
    try:
        with open(hf_hub_download(model, "config.json"), encoding="utf-8") as f:
            return json.load(f)
    except Exception as e:  # noqa: BLE001 - offline, gated, typo: all one line for the user
        raise UnsupportedModelError(f"cannot read the config of model '{model}': {type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''}") from None


def detect_family(config_or_path: Any) -> str:
    """The family (a key of FAMILIES) of a model folder, hub name, config dict or PretrainedConfig."""
    name = config_or_path if isinstance(config_or_path, (str, os.PathLike)) else None
    config = load_config(os.fspath(name)) if name is not None else config_or_path
    model_type = _model_type(config)
    if model_type in FAMILIES:
        return model_type
    what = f"model '{os.fspath(name)}'" if name is not None else "this model"
    raise UnsupportedModelError(
        f"{what} is of type '{model_type or 'unknown'}', which povid does not support; supported families: {supported_line()}"
    )


def user_messages(prompt: str, answer: str | None = None, n_images: int = 1) -> list[dict]:
    """One user turn with the image(s) then the prompt text (and the assistant's answer when given).

    This is the conversational layout both chat templates and TRL's DPOTrainer expect. Every supported family
    takes several images in one turn (multi-image items: MIA-DPO, LLaVA-interleave); LLaVA-1.5 checkpoints were
    trained on one, LLaVA-interleave on several.
    """
    msgs = [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": prompt}]}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def chat_prompt(processor_or_tokenizer: Any, prompt: str, n_images: int = 1) -> str:
    """The model's own chat template applied to the image(s) + prompt, ready for generation."""
    template_owner = processor_or_tokenizer
    if getattr(template_owner, "chat_template", None) is None:
        tok = getattr(template_owner, "tokenizer", None)
        if tok is not None and getattr(tok, "chat_template", None) is not None:
            template_owner = tok
        else:
            raise UnsupportedModelError("the model's processor has no chat template; povid needs an instruction-tuned "
                                        "checkpoint whose processor or tokenizer defines one")
    return template_owner.apply_chat_template(user_messages(prompt, n_images=n_images), tokenize=False,
                                              add_generation_prompt=True)
