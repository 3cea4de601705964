"""`train --loss mdpo`: mDPO's objective (Wang et al. 2024, "mDPO: Conditional Preference Optimization for
Multimodal Large Language Models"; reference trainer: github.com/luka-group/mDPO, mdpo_trainer.py).

For a pair (image m, prompt x, chosen y_w, rejected y_l), with r(y | m) = log pi(y | m, x) - log pi_ref(y | m, x):

    dpo          = -log sigmoid(beta * (r(y_w | m) - r(y_l | m)))          the usual preference
    conditional  = -log sigmoid(beta * (r(y_w | m) - r(y_w | m')))         the same answer, real vs corrupted image
    anchor       = -log sigmoid(beta * r(y_w | m) - delta),  delta = 0     keep the chosen reward above 0
    loss         = mean_i  w_i * (dpo_i + conditional_i + anchor_i)   (+ --sft-weight x the chosen NLL)

m' is the item's `contrast` image when the training data has a contrast pair of the item (`filter --kinds
...,contrast`; povid_cli/train/data.py attaches it as `cond_images`), else mDPO's own corruption: a random crop
keeping 1-20% of the area, resized back (povid_cli/train/collator.py, drawn anew at every step). A `contrast` row
(y_l = y_w under its distorted image) already is a conditional preference: its dpo term is that one, and it gets
no second conditional term (`cond_mask` 0).

How: povid's collator adds a third group of rows, [x + y_w] under m', so the batch is [chosen; rejected;
conditional] (3B rows) and one policy forward plus one reference forward cover all three terms (1.5x the rows of
plain DPO). Because the chosen rows and the conditional rows are in the same forward, a corrupted image equal to
the clean one gives a conditional margin of exactly 0. The policy forward and the reference forward are TRL's own
(labels masked to the answer, `fused_lm_head`, PEFT reference by disabling or swapping the adapter).

Logged: TRL's rewards/* and logps/* for the dpo term, `mdpo/dpo_loss`, `mdpo/conditional_loss`,
`mdpo/anchor_loss`, `mdpo/conditional_margin` (beta * (r(y_w|m) - r(y_w|m')) over the rows with a conditional
term), `mdpo/conditional_accuracy`, `mdpo/anchor_reward` (beta * r(y_w | m)), `mdpo/logps/conditional`,
`mdpo/conditional_rows` (the share of rows with a conditional term). Weights (`--weight-column`) apply in training
only, like every povid loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from povid_cli.train.losses import NON_MODEL_KEYS
from povid_cli.train.weighted import WeightedDPOTrainer

MDPO_LOSSES = ("sigmoid", "sft")


def mdpo_terms(logps: torch.Tensor, ref_logps: torch.Tensor, cond_mask: torch.Tensor, beta: float,
               delta: float = 0.0) -> dict[str, torch.Tensor]:
    """The per-pair terms from the summed answer log-probs of [chosen; rejected; conditional] (3B rows) of the
    policy and the reference: dpo, conditional (0 where cond_mask is 0), anchor, and the rewards."""
    chosen, rejected, cond = logps.chunk(3)
    ref_chosen, ref_rejected, ref_cond = ref_logps.chunk(3)
    chosen_r, rejected_r, cond_r = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected), beta * (cond - ref_cond)
    mask = cond_mask.to(chosen_r.dtype)
    return {"dpo": -F.logsigmoid(chosen_r - rejected_r), "conditional": -F.logsigmoid(chosen_r - cond_r) * mask,
            "anchor": -F.logsigmoid(chosen_r - delta), "chosen_reward": chosen_r, "rejected_reward": rejected_r,
            "cond_margin": chosen_r - cond_r, "chosen": chosen, "rejected": rejected, "cond": cond}


class MDPOTrainer(WeightedDPOTrainer):
    """mDPO (see the module docstring): WeightedDPOTrainer's collator with the conditional rows, its own loss."""

    conditional = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        unsupported = sorted(set(self.loss_types) - set(MDPO_LOSSES))
        if unsupported:
            raise ValueError(f"mdpo's preference term is sigmoid DPO (+ sft); got loss types {unsupported}")
        if self.f_divergence_type != "reverse_kl" or self.ld_alpha is not None or self.use_weighting \
                or self.precompute_ref_logps:
            raise ValueError("mdpo needs f_divergence_type='reverse_kl', no ld_alpha, no use_weighting and no "
                             "precompute_ref_log_probs")

    def _reference(self, kwargs: dict, labels: torch.Tensor) -> torch.Tensor:
        """The reference's per-token log-probs, as TRL's _compute_loss gets them."""
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if is_peft_model(self.model) and self.ref_model is None:
                unwrapped = self.accelerator.unwrap_model(self.model)
                with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                    return self.model(**kwargs, labels=labels, fused_lm_head=True).log_probs
            return self.ref_model(**kwargs, labels=labels, fused_lm_head=True).log_probs

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        weight = inputs.get("weight") if mode == "train" else None  # weights shape training only
        completion_mask = inputs["completion_mask"]
        kwargs = {k: v for k, v in inputs.items() if k not in NON_MODEL_KEYS}
        kwargs["use_cache"] = False
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        policy_kwargs = dict(kwargs, output_router_logits=True) if self.aux_loss_enabled else kwargs
        outputs = model(**policy_kwargs, labels=labels, fused_lm_head=True)
        seq_len = completion_mask.size(1) - 1
        per_token = outputs.log_probs[:, -seq_len:]
        ref_per_token = self._reference(kwargs, labels)[:, -seq_len:]
        t = mdpo_terms(per_token.sum(1), ref_per_token.sum(1), inputs["cond_mask"], self.beta)
        n = t["dpo"].shape[0]
        w = torch.ones(n, device=t["dpo"].device) if weight is None else weight.to(t["dpo"].device)
        w = w.to(t["dpo"].dtype)
        loss = ((t["dpo"] + t["conditional"] + t["anchor"]) * w).mean()
        for loss_type, loss_weight in zip(self.loss_types, self.loss_weights, strict=True):
            if loss_type == "sft":  # the chosen answer's next-word loss (TRL's sft term), weighted per pair
                chosen_mask = completion_mask[:n, 1:]
                nll = -(per_token[:n] * chosen_mask * w[:, None]).sum() / chosen_mask.sum().clamp(min=1)
                loss = loss + loss_weight * nll
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        self._log_mdpo(mode, t, inputs, weight)
        return (loss, outputs) if return_outputs else loss

    def _log_mdpo(self, mode: str, t: dict, inputs: dict, weight) -> None:
        metrics, gather = self._metrics[mode], self.accelerator.gather_for_metrics

        def mean(x: torch.Tensor) -> float:
            return gather(x.detach().float()).mean().item()

        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item() // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        chosen_r, rejected_r = t["chosen_reward"], t["rejected_reward"]
        metrics["rewards/chosen"].append(mean(chosen_r))
        metrics["rewards/rejected"].append(mean(rejected_r))
        metrics["rewards/accuracies"].append(mean((chosen_r > rejected_r).float()))
        metrics["rewards/margins"].append(mean(chosen_r - rejected_r))
        metrics["logps/chosen"].append(mean(t["chosen"]))
        metrics["logps/rejected"].append(mean(t["rejected"]))
        metrics["mdpo/dpo_loss"].append(mean(t["dpo"]))
        metrics["mdpo/anchor_loss"].append(mean(t["anchor"]))
        metrics["mdpo/anchor_reward"].append(mean(chosen_r))
        mask = gather(inputs["cond_mask"].detach().float())
        metrics["mdpo/conditional_rows"].append(mask.mean().item())
        if mask.sum() > 0:  # only rows with a conditional term (contrast rows have none)
            sel = mask > 0
            margin = gather(t["cond_margin"].detach().float())[sel]
            metrics["mdpo/conditional_loss"].append(gather(t["conditional"].detach().float())[sel].mean().item())
            metrics["mdpo/conditional_margin"].append(margin.mean().item())
            metrics["mdpo/conditional_accuracy"].append((margin > 0).float().mean().item())
            metrics["mdpo/logps/conditional"].append(gather(t["cond"].detach().float())[sel].mean().item())
        if weight is not None:
            metrics["weight"].append(mean(weight))
