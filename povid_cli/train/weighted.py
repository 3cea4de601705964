"""`train --weight-column COL`: each pair's loss multiplied by its weight (MMedPO), inside TRL's DPO loss.

TRL has no per-pair weight (trl#5613), so this trainer adds one. How:
1. the weights travel with the rows: `weight` is kept as a signature column (TRL would drop it), and povid's
   collator (povid_cli/train/collator.py, TRL's vision collator generalised) puts `weight` (float32, one per
   pair) into the batch;
2. `_compute_loss` takes `weight` out of the batch (the model must not see it), lets TRL compute everything as
   usual (forwards, reference, metrics), catches the policy's and the reference's per-token log-probs on their
   way out of the two forwards (forward hooks: no extra forward), and returns the weighted loss instead:

       loss = sum over --loss terms t of  loss_weight_t * mean_i( w_i * l_t(i) )
       sft term (--sft-weight):  - sum_i w_i sum_tok logp(chosen_i tok) / (chosen tokens in the batch)

   l_t is TRL's own per-pair loss (sigmoid, hinge, ipo, robust: same formulas); with every w_i = 1 the result is
   TRL's loss exactly (tests/test_train_weights.py checks it), with w_i = 0 pair i gives no gradient at all.
   The SFT term is weighted too: a pair's weight scales everything that pair contributes, so weight 0 really
   means "no gradient from this pair", and the chosen answers of the pairs that matter less are imitated less.
3. `--loss povid` (PovidDPOTrainer subclasses this one) weights both of its terms the same way, and `--loss mdpo`
   (MDPOTrainer, povid_cli/train/mdpo.py) its three.

This trainer (and so every povid trainer) also trains `contrast` pairs: its collator prompts the rejected half of
such a row with the row's `rejected_images` (the answer is the same text), so TRL's loss, whatever --loss, is the
image-contrast preference (mDPO's conditional term, V-DPO, CHiP) for those rows.

Only training is weighted: evaluation reports TRL's plain loss on the held-out pairs, so runs with and
without weights can be compared on the same numbers. The mean weight of each batch is logged as `weight`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import DPOTrainer

from povid_cli.train.collator import PairCollator

WEIGHTED_LOSSES = ("sigmoid", "hinge", "ipo", "robust", "sft")
# the row columns povid's collator reads besides TRL's (TRL's remove_unused_columns would drop them)
POVID_COLUMNS = ("weight", "rejected_images", "cond_images")


class WeightedDPOTrainer(DPOTrainer):
    """`DPOTrainer` whose training loss weights each pair by the batch's `weight` (see the module docstring), with
    povid's collator (rejected-side images for contrast pairs). Batches without `weight` go through TRL's loss
    unchanged."""

    conditional = False  # MDPOTrainer: the collator adds mDPO's conditional rows

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        inner = self.data_collator
        self.data_collator = PairCollator(processor=inner.processor, max_length=inner.max_length,
                                          pad_to_multiple_of=inner.pad_to_multiple_of, conditional=self.conditional,
                                          seed=self.args.seed)

    def check_weightable(self) -> None:
        """Weights are applied to TRL's plain per-pair losses only (what povid's --loss offers)."""
        unsupported = sorted(set(self.loss_types) - set(WEIGHTED_LOSSES))
        if unsupported:
            raise ValueError(f"per-pair weights support the loss types {WEIGHTED_LOSSES}, not {unsupported}")
        if (self.f_divergence_type != "reverse_kl" or self.ld_alpha is not None or self.use_weighting
                or self.precompute_ref_logps):
            raise ValueError("per-pair weights need f_divergence_type='reverse_kl', no ld_alpha, no use_weighting "
                             "and no precompute_ref_log_probs")

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        missing = [c for c in POVID_COLUMNS if c not in self._signature_columns]
        if missing:  # else remove_unused_columns drops them before the collator
            self._signature_columns = [*self._signature_columns, *missing]

    def _hooked_modules(self, model) -> list:
        """The modules whose forward outputs are the policy's and the reference's log-probs (once each: the
        unwrapped policy also serves as the PEFT reference, a DDP/DeepSpeed wrapper calls it)."""
        mods = {}
        for m in (self.accelerator.unwrap_model(model), self.model, self.ref_model):
            if m is not None:
                mods.setdefault(id(m), m)
        return list(mods.values())

    def _compute_loss(self, model, inputs, return_outputs):
        weight = inputs.get("weight")
        if weight is None:
            return super()._compute_loss(model, inputs, return_outputs)
        inputs = {k: v for k, v in inputs.items() if k != "weight"}
        self.check_weightable()
        if not self.model.training:
            return super()._compute_loss(model, inputs, return_outputs)
        caught = []

        def catch(module, args, output):
            if getattr(output, "log_probs", None) is not None:
                caught.append(output)

        hooks = [m.register_forward_hook(catch) for m in self._hooked_modules(model)]
        try:
            result = super()._compute_loss(model, inputs, return_outputs)
        finally:
            for h in hooks:
                h.remove()
        if len(caught) != 2:
            raise RuntimeError(f"expected the policy and reference forwards, caught {len(caught)}")
        policy, reference = caught
        loss = self.weighted_loss(policy.log_probs, reference.log_probs.detach(), inputs["completion_mask"],
                                  weight)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * policy.aux_loss
        self._metrics["train"]["weight"].append(self.accelerator.gather_for_metrics(weight).float().mean().item())
        return (loss, result[1]) if return_outputs else loss

    def weighted_loss(self, per_token_logps: torch.Tensor, ref_per_token_logps: torch.Tensor,
                      completion_mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The weighted loss from the per-token log-probs of [chosen; rejected] (TRL's layout and formulas)."""
        shift_mask = completion_mask[..., 1:]
        seq_len = shift_mask.size(1)
        per_token_logps = per_token_logps[:, -seq_len:]
        logps = per_token_logps.sum(dim=1)
        ref_logps = ref_per_token_logps[:, -seq_len:].sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        ref_chosen, ref_rejected = ref_logps.chunk(2, dim=0)
        chosen_lr, rejected_lr = chosen_logps - ref_chosen, rejected_logps - ref_rejected
        delta = chosen_lr - rejected_lr
        w = weight.to(device=delta.device, dtype=delta.dtype)
        beta = self.beta
        loss = 0.0
        for loss_type, loss_weight in zip(self.loss_types, self.loss_weights, strict=True):
            if loss_type == "sft":  # TRL: mean next-word loss over all chosen tokens of the batch
                chosen_mask, _ = shift_mask.chunk(2, dim=0)
                chosen_tok, _ = per_token_logps.chunk(2, dim=0)
                weighted = (chosen_tok * chosen_mask * w[:, None].to(chosen_tok.dtype)).sum()
                loss = loss + (-weighted / chosen_mask.sum().clamp(min=1)) * loss_weight
                continue
            if loss_type == "sigmoid":
                per_pair = -F.logsigmoid(beta * delta)
            elif loss_type == "hinge":
                per_pair = torch.relu(1 - beta * delta)
            elif loss_type == "ipo":  # TRL normalises by the completion lengths (unshifted mask)
                cm, rm = completion_mask.chunk(2, dim=0)
                ipo_delta = chosen_lr / cm.sum(dim=1).clamp(min=1.0) - rejected_lr / rm.sum(dim=1).clamp(min=1.0)
                per_pair = (ipo_delta - 1 / (2 * beta)) ** 2
            elif loss_type == "robust":
                ls = self.label_smoothing
                per_pair = (-(1 - ls) * F.logsigmoid(beta * delta) + ls * F.logsigmoid(-beta * delta)) / (1 - 2 * ls)
            else:  # refused in __init__
                raise ValueError(loss_type)
            loss = loss + (per_pair * w).mean() * loss_weight
        return loss
