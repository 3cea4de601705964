"""`povid train`: DPO on the pairs with TRL's `DPOTrainer`, POVID's schedule and (optionally) loss, LoRA or full.

Input: a povid dataset (`pairs`) or TRL Parquet (see `stages.train_data`).
Output folder:
```
OUT/train_args.json            # the config, the data counts, the token-budget report
OUT/stage1-text/               # --schedule povid: the stage-1 adapter (or model) + processor
OUT/stage2-text-2/ ...         # --curriculum K: one folder per stage (text-1 .. text-K, image-1 .. image-K)
OUT/final/                     # the final LoRA adapter (or full model) + processor
OUT/merged/                    # --merge: the base model with the adapter folded in
OUT/checkpoints/<stage>/checkpoint-N/   # Trainer checkpoints (optimizer, scheduler, RNG): --resume
OUT/metrics.jsonl  OUT/metrics.png     # loss / reward margins / accuracies, train and per-kind eval
```
Schedules: `povid` = stage 1 on `text` pairs (3 epochs), then stage 2 on `image` pairs (1 epoch) starting from
the stage-1 weights, with the stage-1 model as the DPO reference (TRL copies a loaded adapter into a frozen
"ref" adapter; a full model is reloaded as its own reference); `mixed` = one run over the selected kinds.
Which stages, on which pairs (schedule, curriculum): povid_cli/train/plan.py. Per-pair weights and contrast
pairs: povid_cli/train/weighted.py and collator.py; `--loss povid`: losses.py; `--loss mdpo`: mdpo.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from povid_cli.core.errors import PovidError, UsageError
from povid_cli.train.config import LOSSES, TrainConfig  # noqa: F401 - TrainConfig: part of this module's API
from povid_cli.train.plan import StagePlan, expand, parse_curriculum, plan_stages, stage_dirs  # noqa: F401

log = logging.getLogger("povid.train")

DONE = "povid_stage.json"
# module paths of vision towers / projectors: LoRA stays on the language model, as in LLaVA and POVID
VISION_PARTS = ("vision", "visual", "multi_modal_projector", "mm_projector", "connector", "merger",
                "image_newline", "patch_embed", "lm_head")


@dataclass
class TrainResult:
    output: str
    final: str
    merged: str | None
    stages: list[dict]
    budget: str
    metrics: dict
    plot: str | None


# -- checks --------------------------------------------------------------------------------------------
def require_train():
    """Import the [train] extra (one clear line if it is missing)."""
    from povid_cli.core.errors import require

    for module in ("torch", "transformers", "trl", "peft", "datasets", "accelerate"):
        require(module, "train")


def resolve_bf16(requested: bool | None) -> bool:
    import torch

    gpu = torch.cuda.is_available()
    if requested is None:
        return gpu and torch.cuda.is_bf16_supported()
    if requested and not gpu:
        raise UsageError("--bf16 needs a CUDA GPU and none is visible; train on CPU with --no-bf16")
    return requested


def model_family(model: str) -> str:
    """The model's `model_type`, if transformers knows it as an image-text-to-text model. The families in
    `povid_cli.backends.families` are the tested ones; other VLMs TRL can train are accepted with a warning."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    from povid_cli.backends.families import FAMILIES, looks_like_path, supported_line

    if looks_like_path(model):
        raise PovidError(f"model folder {model} does not exist")
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PovidError(f"cannot load the model config from {model}: {first}") from e
    family = getattr(config, "model_type", None)
    if family not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise PovidError(
            f"unknown model family {family!r} ({model}): povid train needs a vision-language model that "
            f"transformers loads with AutoModelForImageTextToText; tested families: {supported_line()}")
    if family not in FAMILIES:
        log.warning("model family %r is not one povid tests (%s); training it through TRL anyway",
                    family, supported_line())
    return family


def check_report_to(report_to: str) -> None:
    import importlib.util

    if report_to != "none" and importlib.util.find_spec(report_to) is None:
        raise PovidError(f"--report-to {report_to} needs the '{report_to}' package: pip install {report_to}")


# what a resumed run must share with the run it continues
RESUME_KEYS = ("data", "model", "kind", "schedule", "loss", "full", "lora_r", "lora_alpha", "max_length",
               "curriculum", "weight_column")


def check_output(out: Path, resume: bool, cfg: TrainConfig | None = None) -> None:
    if out.exists() and not out.is_dir():
        raise PovidError(f"{out} exists and is not a folder")
    if resume and cfg is not None and (out / "train_args.json").exists():
        before = json.loads((out / "train_args.json").read_text()).get("config", {})
        def norm(v):  # the same folder given as another relative path is the same input
            return os.path.realpath(v) if isinstance(v, str) and os.path.exists(v) else v

        changed = [k for k in RESUME_KEYS if k in before and norm(before[k]) != norm(asdict(cfg)[k])]
        if changed:
            k = changed[0]
            raise PovidError(f"--resume: {out} was trained with {k}={before[k]!r}, not {asdict(cfg)[k]!r}; "
                             "use the same settings or another -o")
    if resume or not out.exists():
        return
    stray = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    if stray:
        raise PovidError(f"{out} already holds a training run ({', '.join(sorted(stray)[:3])}); "
                         "pass --resume to continue it, or choose another -o")


# -- model ---------------------------------------------------------------------------------------------
def lora_targets(model) -> str:
    """A PEFT regex for the language model's linear layers (not the vision tower, projector or LM head)."""
    import re

    import torch

    suffixes = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                       if isinstance(m, torch.nn.Linear) and not any(p in name for p in VISION_PARTS)})
    if not suffixes:
        raise PovidError("found no linear layers in the language model to put LoRA on; use --full")
    excluded = "|".join(re.escape(p) for p in VISION_PARTS)
    return rf"^(?!.*(?:{excluded})).*\.(?:{'|'.join(map(re.escape, suffixes))})$"


def load_policy(cfg: TrainConfig, start: Path | None, bf16: bool):
    """The model to train: the base (a fresh LoRA is added by TRL), or the previous stage's weights."""
    import torch
    from transformers import AutoModelForImageTextToText

    dtype = torch.bfloat16 if bf16 else torch.float32
    if start is None or cfg.full:
        return AutoModelForImageTextToText.from_pretrained(str(start or cfg.model), dtype=dtype)
    from peft import PeftModel

    base = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=dtype)
    return PeftModel.from_pretrained(base, str(start), is_trainable=True)


def dpo_args(cfg: TrainConfig, output_dir: Path, epochs: float, bf16: bool, has_eval: bool):
    import torch
    from trl import DPOConfig

    base_loss = "sigmoid" if cfg.loss in ("povid", "mdpo") else cfg.loss
    # --sft-weight: TRL's "sft" loss term (mean next-word loss over the chosen tokens) with that weight, which is
    # what the older TRL `rpo_alpha` did; under --loss povid both terms carry it, so the total gains it once
    losses = {"loss_type": [base_loss, "sft"], "loss_weights": [1.0, cfg.sft_weight]} if cfg.sft_weight else \
        {"loss_type": [base_loss]}
    return DPOConfig(
        output_dir=str(output_dir), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_ratio,
        num_train_epochs=epochs, max_steps=cfg.max_steps, beta=cfg.beta, **losses,
        label_smoothing=cfg.label_smoothing, max_length=cfg.max_length, bf16=bf16, fp16=False,
        use_cpu=not torch.cuda.is_available(), gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps, save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500, save_total_limit=2,
        eval_strategy="steps" if has_eval else "no", eval_steps=cfg.eval_steps if has_eval else None,
        eval_on_start=has_eval, report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        seed=cfg.seed, data_seed=cfg.seed, dataloader_num_workers=cfg.num_workers, disable_tqdm=False,
    )


def trainer_class(cfg: TrainConfig, weighted: bool, contrast: bool) -> tuple[type, dict]:
    """The trainer for --loss (and its extra arguments): povid's subclasses where TRL's DPOTrainer cannot do it
    (weights, contrast pairs' rejected images, the povid and mdpo losses), TRL's own otherwise."""
    if cfg.loss == "povid":
        from povid_cli.train.losses import PovidDPOTrainer

        return PovidDPOTrainer, {"povid_weight": cfg.povid_weight, "noise_step": cfg.noise_step}
    if cfg.loss == "mdpo":
        from povid_cli.train.mdpo import MDPOTrainer

        return MDPOTrainer, {}
    if weighted or contrast:
        from povid_cli.train.weighted import WeightedDPOTrainer

        return WeightedDPOTrainer, {}
    from trl import DPOTrainer

    return DPOTrainer, {}


def cur_score(cfg: TrainConfig) -> str:
    cur = parse_curriculum(cfg.curriculum)
    return cur.score if cur else ""


def has_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.startswith("checkpoint-") for p in folder.iterdir())


# -- the run -------------------------------------------------------------------------------------------
def run_train(cfg: TrainConfig, echo: Callable[[str], None] = log.info, trainer_callbacks: list | None = None) -> TrainResult:
    """Train as `cfg` says; returns where everything went. Raises PovidError on bad input."""
    require_train()
    bf16 = resolve_bf16(cfg.bf16)
    check_report_to(cfg.report_to)
    family = model_family(cfg.model)
    out = Path(cfg.output)
    check_output(out, cfg.resume, cfg)

    from transformers import AutoProcessor

    from povid_cli.train.data import to_hf
    from povid_cli.train.metrics import MetricsLogger, plot, read_metrics, summary
    from povid_cli.train.plan import prepare

    processor = AutoProcessor.from_pretrained(cfg.model)
    if not hasattr(processor, "image_processor"):
        raise PovidError(f"{cfg.model} has no image processor (AutoProcessor gave {type(processor).__name__})")
    plans, evals, budget_lines = prepare(cfg, processor, echo)
    weighted = cfg.weight_column is not None
    contrast = any(r.get("rejected_images") for p in plans for r in p.rows) or \
        any(r.get("rejected_images") for ev in evals.values() for r in ev)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "train_args.json", {"config": asdict(cfg), "family": family, "bf16": bf16,
                                          "stages": [{"name": p.name, "kind": p.kind, "epochs": p.epochs,
                                                      "rows": len(p.rows), "difficulty": p.difficulty,
                                                      "digest": p.digest()} for p in plans],
                                          "eval_rows": {k: len(v) for k, v in evals.items()},
                                          "token_budget": budget_lines})
    metrics_path = str(out / "metrics.jsonl")
    dirs = stage_dirs(out, plans)
    previous, offset, done = None, 0, []
    eval_sets = {kind: to_hf(ev, weighted) for kind, ev in sorted(evals.items())} or None
    for i, (plan, save_dir) in enumerate(zip(plans, dirs)):
        marker = save_dir / DONE
        if marker.exists():
            info = json.loads(marker.read_text())
            if info.get("digest", plan.digest()) != plan.digest():
                raise PovidError(f"--resume: stage {i + 1} ({plan.name}) in {save_dir} was trained on other pairs "
                                 "(the data, --limit, --seed or --eval-fraction changed); use another -o")
            echo(f"stage {i + 1} ({plan.name}) already done in {save_dir}; skipping it")
            offset += info.get("steps", 0)
            previous = save_dir
            done.append(info)
            continue
        ckpt_dir = out / "checkpoints" / plan.name
        resume = cfg.resume and has_checkpoint(ckpt_dir)
        hard = f", {plan.difficulty[0]:g}..{plan.difficulty[1]:g} {cur_score(cfg)}" if plan.difficulty else ""
        echo(f"stage {i + 1}/{len(plans)}: {len(plan.rows)} {plan.name} pairs{hard}, {plan.epochs:g} epoch(s)"
             + (f", resuming from {ckpt_dir}" if resume else "") + (f", starting from {previous}" if previous else ""))
        args = dpo_args(cfg, ckpt_dir, plan.epochs, bf16, eval_sets is not None)
        model = load_policy(cfg, previous, bf16)
        peft_config = None
        if not cfg.full and previous is None:
            from peft import LoraConfig

            peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                     target_modules=lora_targets(model), task_type="CAUSAL_LM")
        trainer_cls, extra = trainer_class(cfg, weighted, contrast)
        ref_model = None
        if cfg.full and previous is not None:  # TRL would reload the original base as the reference
            from transformers import AutoModelForImageTextToText

            ref_model = AutoModelForImageTextToText.from_pretrained(str(previous), dtype=model.dtype)
        trainer = trainer_cls(
            model=model, ref_model=ref_model, args=args, train_dataset=to_hf(plan.rows, weighted), eval_dataset=eval_sets,
            processing_class=processor, peft_config=peft_config,
            callbacks=[MetricsLogger(metrics_path, plan.name, offset)] + list(trainer_callbacks or []), **extra)
        trainer.train(resume_from_checkpoint=True if resume else None)
        if eval_sets is not None and trainer.state.global_step % cfg.eval_steps:
            trainer.evaluate()
        trainer.save_model(str(save_dir))
        steps = trainer.state.global_step
        if trainer.is_world_process_zero():
            shutil.rmtree(save_dir / "ref", ignore_errors=True)  # TRL's frozen copy of the previous adapter
            processor.save_pretrained(str(save_dir))
            info = {"stage": plan.name, "kind": plan.kind, "rows": len(plan.rows), "epochs": plan.epochs,
                    "steps": steps, "lora": not cfg.full, "loss": cfg.loss, "digest": plan.digest(),
                    "difficulty": plan.difficulty, "reference": str(previous) if previous else cfg.model}
            _write_json(marker, info)
            done.append(info)
        trainer.accelerator.wait_for_everyone()  # the next stage loads what rank 0 just saved
        offset += steps
        previous = save_dir
        del trainer, model, ref_model
        _free_memory()
    rows_logged = read_metrics(metrics_path)
    png = plot(rows_logged, str(out / "metrics.png")) if _is_main() else None
    merged = None
    if cfg.merge and _is_main():
        merged = str(merge_adapter(str(dirs[-1]), str(out / "merged"), base=cfg.model))
    return TrainResult(output=str(out), final=str(dirs[-1]), merged=merged, stages=done,
                       budget="; ".join(budget_lines), metrics=summary(rows_logged), plot=png)


def merge_adapter(adapter: str, output: str, base: str | None = None) -> Path:
    """Fold a LoRA adapter into its base model and save the whole model with the processor."""
    require_train()
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if not (Path(adapter) / "adapter_config.json").exists():
        raise PovidError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    base = base or PeftConfig.from_pretrained(adapter).base_model_name_or_path
    if not base:
        raise PovidError(f"{adapter} does not name its base model; pass --model")
    model_family(base)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    out = Path(output)
    model.save_pretrained(str(out))
    processor_src = adapter if (Path(adapter) / "processor_config.json").exists() or \
        (Path(adapter) / "preprocessor_config.json").exists() else base
    AutoProcessor.from_pretrained(processor_src).save_pretrained(str(out))
    return out


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
