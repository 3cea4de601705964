"""`train --loss povid`: POVID's in-training "inherent hallucination" term on top of TRL's DPO loss.

For every batch (TRL's layout: rows [0, B) = prompt + chosen, rows [B, 2B) = prompt + rejected):
1. the image is noised in model space, x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with POVID's
   schedule (`stages.diffusion`, t = 500 by default), applied to `pixel_values` as POVID/VCD do;
2. the policy reads the ground-truth answer teacher-forced under the *noised* image; its argmax token at
   every answer position is what it "sees" when it leans on its language prior instead of the image;
3. that argmax sequence is a second rejected answer, scored (policy and reference) under the *clean* image:
   loss = (1 - w) * DPO(chosen, rejected) + w * DPO(chosen, argmax-under-noise),   w = 0.5 by default.

Both terms go through `DPOTrainer.compute_loss`, so every TRL loss type, PEFT, DeepSpeed and FSDP work
unchanged; the second term's metrics are logged as `povid/rewards/margins`, `povid/rewards/accuracies`, ...
With per-pair weights (`--weight-column`, povid_cli/train/weighted.py, which this trainer extends) both
terms are weighted. In a batch with `contrast` pairs the rejected half holds the distorted images: the second
term's rows all get the chosen half's (clean) images (`clean_images_twice`).
"""

from __future__ import annotations

import torch
from trl.models.utils import disable_gradient_checkpointing

from povid_cli.train.weighted import WeightedDPOTrainer
from stages.diffusion import DEFAULT_T, NUM_STEPS, coefficients

# keys aligned with the token sequence: the hallucinated half copies the chosen half's values
SEQUENCE_KEYS = ("attention_mask", "completion_mask", "token_type_ids", "mm_token_type_ids", "position_ids")
NON_MODEL_KEYS = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps", "weight", "cond_mask")
# the second term's metrics worth keeping (the chosen side repeats the first term's)
POVID_METRICS = ("rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/rejected")


def add_noise_torch(pixel_values: torch.Tensor, t: int = DEFAULT_T, generator: torch.Generator | None = None,
                    num_steps: int = NUM_STEPS) -> torch.Tensor:
    """POVID's forward-diffusion jump on a model-space tensor (same schedule as `povid distort`).

    Images that are all zeros (the padding images of Idefics3-style processors, which the model detects
    by being zero) stay zero."""
    a, s = coefficients(t, num_steps)
    eps = torch.randn(pixel_values.shape, generator=generator, device=pixel_values.device, dtype=torch.float32)
    out = (pixel_values.float() * a + eps * s).to(pixel_values.dtype)
    if pixel_values.dim() == 5:  # (batch, images, C, H, W)
        padding = (pixel_values == 0).flatten(2).all(dim=-1)
        out[padding] = 0
    return out


def clean_images_twice(inputs: dict, n: int) -> dict:
    """The batch's image tensors with the rejected half's images replaced by the chosen half's (rows [0, n)).

    Both halves hold as many images (contrast pairs: the same count, other pixels); Qwen-VL's patches of all
    images are concatenated, with `image_grid_thw` saying how many each has."""
    out = {}
    grid = inputs.get("image_grid_thw")
    for key, value in inputs.items():
        if key in SEQUENCE_KEYS or key in NON_MODEL_KEYS or key == "input_ids" or not torch.is_tensor(value) \
                or value.dim() == 0:
            continue
        if key == "pixel_values" and grid is not None:
            patches = int(grid[: grid.shape[0] // 2].prod(dim=-1).sum())
            out[key] = torch.cat([value[:patches], value[:patches]])
        elif value.shape[0] % 2 == 0:  # one entry per image (or per row): the first half is the chosen rows'
            half = value.shape[0] // 2
            out[key] = torch.cat([value[:half], value[:half]])
    return out


class PovidDPOTrainer(WeightedDPOTrainer):
    """`DPOTrainer` (per-pair weights when the batch has them) + POVID's noised-image argmax as a second
    rejected answer (see the module docstring)."""

    def __init__(self, *args, povid_weight: float = 0.5, noise_step: int = DEFAULT_T, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= povid_weight <= 1.0:
            raise ValueError(f"povid_weight must be in [0, 1], got {povid_weight}")
        coefficients(noise_step)  # validates t
        self.povid_weight = povid_weight
        self.noise_step = noise_step
        self._noise_calls = 0

    def _generator(self, device: torch.device) -> torch.Generator:
        # reproducible per call (and different across ranks), without touching the global RNG state
        g = torch.Generator(device=device)
        g.manual_seed(self.args.seed * 1_000_003 + self.accelerator.process_index * 7919 + self._noise_calls)
        self._noise_calls += 1
        return g

    @staticmethod
    def chosen_half(kwargs: dict, n: int) -> dict | None:
        """The model inputs of rows [0, n) (prompt + chosen), or None when a tensor cannot be split."""
        out = {}
        grid = kwargs.get("image_grid_thw")
        for key, value in kwargs.items():
            if not torch.is_tensor(value):
                out[key] = value
            elif key == "pixel_values" and grid is not None:  # Qwen-VL: patches of all images, one after another
                out[key] = value[: int(grid[: grid.shape[0] // 2].prod(dim=-1).sum())]
            elif key == "image_grid_thw":
                out[key] = value[: value.shape[0] // 2]
            elif value.dim() > 0 and value.shape[0] == 2 * n:
                out[key] = value[:n]
            else:
                return None
        return out

    @torch.no_grad()
    def hallucinated_batch(self, model, inputs: dict) -> dict:
        """The batch [prompt + chosen, prompt + argmax-under-noise], both with the clean image."""
        input_ids = inputs["input_ids"]
        n = input_ids.shape[0] // 2
        completion = inputs["completion_mask"].bool()
        kwargs = {k: v for k, v in inputs.items() if k not in NON_MODEL_KEYS}
        kwargs["pixel_values"] = add_noise_torch(inputs["pixel_values"], self.noise_step,
                                                 self._generator(inputs["pixel_values"].device))
        # only the answer positions need logits: keep those from the first answer token's predecessor on
        length = input_ids.shape[1]
        cols = completion[:n].any(dim=0).nonzero()
        first = int(cols.min()) if len(cols) else length - 1
        keep = length - first + 1
        kwargs = self.chosen_half(kwargs, n) or kwargs  # the rejected half's forward would be thrown away
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            try:
                logits = model(**kwargs, use_cache=False, logits_to_keep=keep).logits
            except TypeError:  # a model without logits_to_keep
                logits = model(**kwargs, use_cache=False).logits[:, -keep:]
        # logits at position i predict token i + 1
        pred = torch.full_like(input_ids[:n], 0)
        pred[:, length - keep + 1:] = logits[:n, :-1].argmax(dim=-1)
        hallucinated = torch.where(completion[:n], pred, input_ids[:n])
        out = dict(inputs)
        out.update(clean_images_twice(inputs, n))  # the second term reads both answers under the clean image
        out["input_ids"] = torch.cat([input_ids[:n], hallucinated])
        for key in SEQUENCE_KEYS:
            if key in inputs and torch.is_tensor(inputs[key]) and inputs[key].shape[:2] == input_ids.shape:
                out[key] = torch.cat([inputs[key][:n], inputs[key][:n]])
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        result = super().compute_loss(model, inputs, return_outputs=return_outputs)
        loss, outputs = result if return_outputs else (result, None)
        if self.povid_weight == 0.0:
            return result
        metrics = self._metrics[mode]
        before = {k: len(v) for k, v in metrics.items()}
        tokens = self._total_train_tokens
        povid_loss = super().compute_loss(model, self.hallucinated_batch(model, inputs), return_outputs=False)
        # the second call logged its metrics under TRL's names: move the useful ones under povid/, drop the rest
        for key in list(metrics):
            new = metrics[key][before.get(key, 0):]
            del metrics[key][before.get(key, 0):]
            if key in POVID_METRICS:
                metrics[f"povid/{key}"].extend(new)
        self._total_train_tokens = tokens
        metrics["num_tokens"] = [tokens]
        metrics["dpo_loss"].append(loss.detach().float().item())
        metrics["povid_loss"].append(povid_loss.detach().float().item())
        total = (1.0 - self.povid_weight) * loss + self.povid_weight * povid_loss
        return (total, outputs) if return_outputs else total
