"""povid's collator: TRL's vision preference collator, where the rejected side may have images of its own.

TRL's `DataCollatorForVisionPreference` gives chosen and rejected the same images, so it cannot train an image
contrast pair (mDPO's conditional preference, V-DPO, CHiP: the same answer, preferred under the clean image over
a distorted one). `PairCollator` builds the same batch (`collate` is TRL's `torch_call` with the prompt/images
groups as a list; for ordinary rows the tensors are TRL's, tests/test_train_contrast.py checks it), plus:

- `rejected_images` (a row's list of images, or None): the rejected half of that row is prompted with them;
- `weight` (a float per row, `--weight-column`): the batch's `weight`, float32 (povid_cli/train/weighted.py);
- `conditional=True` (`--loss mdpo`): a third group of rows, [prompt + chosen] under the corrupted image: the
  row's `cond_images` (its item's contrast image, povid_cli/train/data.py), else its own `rejected_images` (a
  contrast row: masked out), else mDPO's random crop of its images (`random_crop`: < 20% of the area, resized
  back); and `cond_mask` (1.0 where the row has a conditional term, 0.0 for contrast rows, whose DPO term is
  already that preference).

Batch layout: rows [0, B) prompt + chosen, [B, 2B) prompt + rejected, [2B, 3B) (conditional) prompt + chosen
under the corrupted image; `completion_mask`, `input_ids`, `attention_mask` as TRL's, the processor's image
tensors for all 2B (3B) prompts in that order.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference
from trl.trainer.utils import flush_left, pad

CROP_SCALE = (0.01, 0.2)  # mDPO: torchvision RandomResizedCrop(scale=(0.01, 0.2)), default aspect ratios
CROP_RATIO = (3 / 4, 4 / 3)


def random_crop(image, rng: random.Random):
    """mDPO's corrupted image: a random crop of 1-20% of the area (aspect ratio 3/4..4/3), resized back to the
    image's size (torchvision's RandomResizedCrop sampling, in PIL)."""
    from PIL import Image

    w, h = image.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            break
    else:  # torchvision's fallback: a centre crop of the whole image (never reached for ordinary sizes)
        cw, ch, x, y = w, h, 0, 0
    return image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)


def collate(processor, examples: list[dict], image_groups: list[list], completion_keys: list[str],
            max_length: int | None) -> dict[str, Any]:
    """TRL's `DataCollatorForVisionPreference.torch_call` for G groups of rows: group g is every example's prompt
    with `image_groups[g][i]` as its images, followed by its `completion_keys[g]` answer."""
    if is_conversational(examples[0]):
        for ex in examples:
            ex["prompt"] = prepare_multimodal_messages(ex["prompt"], images=ex["images"])
            ex["chosen"] = prepare_multimodal_messages(ex["chosen"])
            ex["rejected"] = prepare_multimodal_messages(ex["rejected"])
        examples = [apply_chat_template(ex, processor) for ex in examples]
    images = [ims for group in image_groups for ims in group]
    if all(ims == [] for ims in images):  # transformers needs at least one image in the batch
        images = None
    prompts = [ex["prompt"] for ex in examples] * len(image_groups)
    processed_prompts = processor(images=images, text=prompts, padding=True, padding_side="left",
                                  return_tensors="pt", add_special_tokens=False)
    done: dict[str, Any] = {}  # an answer's tokens, once per key (mdpo's third group repeats the chosen ones)
    for key in completion_keys:
        if key not in done:
            done[key] = processor(text=[ex[key] for ex in examples], padding=True, padding_side="right",
                                  return_tensors="pt", add_special_tokens=False)
    completions = [done[key] for key in completion_keys]
    prompt_ids, prompt_mask = processed_prompts["input_ids"], processed_prompts["attention_mask"]
    pad_token_id = processor.tokenizer.pad_token_id or processor.tokenizer.eos_token_id
    completion_ids = torch.cat(tuple(pad([c["input_ids"] for c in completions], padding_value=pad_token_id)))
    completion_mask = torch.cat(tuple(pad([c["attention_mask"] for c in completions], padding_value=0)))
    input_ids = torch.cat((prompt_ids, completion_ids), dim=1)
    attention_mask = torch.cat((prompt_mask, completion_mask), dim=1)
    completion_mask = torch.cat((torch.zeros_like(prompt_mask), completion_mask), dim=1)
    extra: dict[str, torch.Tensor] = {}
    if "token_type_ids" in processed_prompts:  # Gemma
        done_types = torch.cat(tuple(pad([c["token_type_ids"] for c in completions], padding_value=0)))
        extra["token_type_ids"] = torch.cat((processed_prompts["token_type_ids"], done_types), dim=1)
    if "mm_token_type_ids" in processed_prompts:  # Qwen2.5-VL
        extra["mm_token_type_ids"] = torch.cat((processed_prompts["mm_token_type_ids"], torch.zeros_like(completion_ids)),
                                               dim=1)
    names = list(extra)
    attention_mask, input_ids, completion_mask, *rest = flush_left(attention_mask, input_ids, completion_mask,
                                                                     *extra.values())
    extra = dict(zip(names, rest))
    if max_length is not None:
        input_ids, attention_mask = input_ids[:, :max_length], attention_mask[:, :max_length]
        completion_mask = completion_mask[:, :max_length]
        extra = {k: v[:, :max_length] for k, v in extra.items()}
    output = processed_prompts  # it holds the image tensors
    output["input_ids"], output["attention_mask"], output["completion_mask"] = input_ids, attention_mask, completion_mask
    output.update(extra)
    return output


@dataclass
class PairCollator(DataCollatorForVisionPreference):
    """`DataCollatorForVisionPreference` + rejected-side images, weights and mDPO's conditional rows (see the
    module docstring)."""

    conditional: bool = False
    seed: int = 0
    _rng: random.Random | None = field(default=None, init=False, repr=False)

    def crop(self, images: list) -> list:
        if self._rng is None:  # per process: DataLoader workers get their own torch seed, hence their own crops
            self._rng = random.Random(f"{self.seed}:{torch.initial_seed()}")
        return [random_crop(im, self._rng) for im in images]

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if self.pad_to_multiple_of is not None:
            raise NotImplementedError("pad_to_multiple_of is not implemented for vision-language data")
        examples = [dict(ex) for ex in examples]
        for ex in examples:
            if "image" in ex:
                ex["images"] = [ex.pop("image")]
        weights = [ex.pop("weight", None) for ex in examples]
        rejected = [ex.pop("rejected_images", None) for ex in examples]
        cond = [ex.pop("cond_images", None) for ex in examples]
        for ex, r in zip(examples, rejected):
            if r is not None and len(r) != len(ex["images"]):
                raise ValueError(f"a row has {len(ex['images'])} image(s) and {len(r)} rejected image(s)")
        groups = [[ex["images"] for ex in examples], [r if r is not None else ex["images"]
                                                      for r, ex in zip(rejected, examples)]]
        keys = ["chosen", "rejected"]
        if self.conditional:
            groups.append([c if c is not None else r if r is not None else self.crop(ex["images"])
                           for c, r, ex in zip(cond, rejected, examples)])
            keys.append("chosen")
        batch = collate(self.processor, examples, groups, keys, self.max_length)
        if any(w is not None for w in weights):
            if any(w is None for w in weights):
                raise ValueError("some rows of a weighted batch have no weight")
            batch["weight"] = torch.tensor(weights, dtype=torch.float32)
        if self.conditional:
            batch["cond_mask"] = torch.tensor([0.0 if r is not None else 1.0 for r in rejected])
        return batch
