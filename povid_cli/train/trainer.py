"""`povid train`: DPO on the pairs with TRL's `DPOTrainer`, POVID's schedule and (optionally) loss, LoRA or full.

Input: a povid dataset (`pairs`) or TRL Parquet (see `stages.train_data`).
Output folder:
```
OUT/train_args.json            # the config, the data counts, the token-budget report
OUT/stage1-text/               # --schedule povid: the stage-1 adapter (or model) + processor
OUT/final/                     # the final LoRA adapter (or full model) + processor
OUT/merged/                    # --merge: the base model with the adapter folded in
OUT/checkpoints/<stage>/checkpoint-N/   # Trainer checkpoints (optimizer, scheduler, RNG): --resume
OUT/metrics.jsonl  OUT/metrics.png     # loss / reward margins / accuracies, train and per-kind eval
```
Schedules: `povid` = stage 1 on `text` pairs (3 epochs), then stage 2 on `image` pairs (1 epoch) starting from
the stage-1 weights, with the stage-1 model as the DPO reference (TRL copies a loaded adapter into a frozen
"ref" adapter; a full model is reloaded as its own reference); `mixed` = one run over the selected kinds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from povid_cli.core.errors import PovidError, UsageError

log = logging.getLogger("povid.train")

LOSSES = ("sigmoid", "ipo", "hinge", "robust", "povid")
SCHEDULES = ("povid", "mixed")
REPORT_TO = ("none", "tensorboard", "wandb")
DONE = "povid_stage.json"
# module paths of vision towers / projectors: LoRA stays on the language model, as in LLaVA and POVID
VISION_PARTS = ("vision", "visual", "multi_modal_projector", "mm_projector", "connector", "merger",
                "image_newline", "patch_embed", "lm_head")


@dataclass(frozen=True)
class TrainConfig:
    """Everything `povid train` takes. Defaults follow the POVID repository."""

    data: str
    model: str
    output: str
    kind: str = "all"                 # text | image | all
    schedule: str = "povid"           # povid (text then image) | mixed (one run)
    loss: str = "sigmoid"             # sigmoid | ipo | hinge | robust | povid
    beta: float = 0.1
    label_smoothing: float = 0.0      # robust loss: assumed fraction of flipped labels
    povid_weight: float = 0.5         # --loss povid: weight of the noised-image term
    sft_weight: float = 0.0           # + weight x next-word loss on the chosen answer (RPO; TRL loss_type "sft")
    noise_step: int = 500             # --loss povid: diffusion step t
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    full: bool = False
    learning_rate: float = 1e-7
    epochs: float | None = None       # None: 3 (stage 1) and 1 (stage 2) for povid, 1 for mixed
    max_steps: int = -1               # per stage; -1: epochs decide
    batch_size: int = 1
    grad_accum: int = 1
    max_length: int | None = 1024
    bf16: bool | None = None          # None: on when a CUDA GPU with bf16 is there
    gradient_checkpointing: bool = False
    resume: bool = False
    report_to: str = "none"
    eval_fraction: float = 0.05
    eval_steps: int = 100
    save_steps: int = 200             # 0: no checkpoints (no --resume inside a stage)
    logging_steps: int = 10
    seed: int = 42
    limit: int | None = None          # the first N pairs of each stage
    merge: bool = False
    warmup_ratio: float = 0.03
    num_workers: int = 0


@dataclass
class StagePlan:
    name: str           # text | image | all
    kind: str
    epochs: float
    rows: list = field(repr=False, default_factory=list)


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
def check_config(cfg: TrainConfig) -> None:
    if cfg.loss not in LOSSES:
        raise UsageError(f"unknown --loss {cfg.loss!r}; choose one of {', '.join(LOSSES)}")
    if cfg.schedule not in SCHEDULES:
        raise UsageError(f"unknown --schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if cfg.kind not in ("text", "image", "all"):
        raise UsageError(f"unknown --kind {cfg.kind!r}; choose one of text, image, all")
    if cfg.report_to not in REPORT_TO:
        raise UsageError(f"unknown --report-to {cfg.report_to!r}; choose one of {', '.join(REPORT_TO)}")
    if not 0.0 <= cfg.eval_fraction < 1.0:
        raise UsageError("--eval-fraction must be in [0, 1)")
    if not 0.0 <= cfg.povid_weight <= 1.0:
        raise UsageError("--povid-weight must be in [0, 1]")
    if cfg.sft_weight < 0:
        raise UsageError("--sft-weight must be at least 0")
    if not 0 <= cfg.noise_step < 1000:
        raise UsageError("--noise-step must be in 0..999")
    if cfg.merge and cfg.full:
        raise UsageError("--merge folds a LoRA adapter into the base model; with --full the saved model is already whole")


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


# -- plan ----------------------------------------------------------------------------------------------
def plan_stages(cfg: TrainConfig, rows: list[dict], source: str) -> list[StagePlan]:
    from povid_cli.train.data import select_kind

    if cfg.schedule == "mixed":
        return [StagePlan("all" if cfg.kind == "all" else cfg.kind, cfg.kind, cfg.epochs or 1,
                          select_kind(rows, cfg.kind, source))]
    kinds = ("text", "image") if cfg.kind == "all" else (cfg.kind,)
    plans = []
    for kind in kinds:
        epochs = cfg.epochs or (3 if kind == "text" else 1)
        try:
            plans.append(StagePlan(kind, kind, epochs, select_kind(rows, kind, source)))
        except PovidError as e:
            stage = "stage 1" if kind == "text" else "stage 2"
            raise PovidError(f"{e}; --schedule povid needs them for {stage} "
                             f"(use --kind {'image' if kind == 'text' else 'text'} or --schedule mixed)") from None
    return plans


def stage_dirs(out: Path, plans: list[StagePlan]) -> list[Path]:
    return [out / "final" if i == len(plans) - 1 else out / f"stage{i + 1}-{p.name}" for i, p in enumerate(plans)]


# what a resumed run must share with the run it continues
RESUME_KEYS = ("data", "model", "kind", "schedule", "loss", "full", "lora_r", "lora_alpha", "max_length")


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

    base_loss = "sigmoid" if cfg.loss == "povid" else cfg.loss
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


def has_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.startswith("checkpoint-") for p in folder.iterdir())


# -- the run -------------------------------------------------------------------------------------------
def run_train(cfg: TrainConfig, echo: Callable[[str], None] = log.info, trainer_callbacks: list | None = None) -> TrainResult:
    """Train as `cfg` says; returns where everything went. Raises PovidError on bad input."""
    check_config(cfg)
    require_train()
    bf16 = resolve_bf16(cfg.bf16)
    check_report_to(cfg.report_to)
    family = model_family(cfg.model)
    out = Path(cfg.output)
    check_output(out, cfg.resume, cfg)

    from transformers import AutoProcessor
    from trl import DPOTrainer

    from povid_cli.train.data import fit_to_budget, read_pairs, split_eval, to_hf
    from povid_cli.train.metrics import MetricsLogger, plot, read_metrics, summary

    rows = read_pairs(cfg.data)
    plans = plan_stages(cfg, rows, cfg.data)
    for plan in plans:  # --limit N: the first N pairs of each stage
        plan.rows = plan.rows[: cfg.limit] if cfg.limit else plan.rows
    processor = AutoProcessor.from_pretrained(cfg.model)
    if not hasattr(processor, "image_processor"):
        raise PovidError(f"{cfg.model} has no image processor (AutoProcessor gave {type(processor).__name__})")
    budget_lines = []
    echo(f"checking the token budget of {sum(len(p.rows) for p in plans)} pairs with {type(processor).__name__}")
    for plan in plans:
        plan.rows, budget = fit_to_budget(plan.rows, processor, cfg.max_length)
        budget_lines.append(f"{plan.name}: {budget.line()}")
        echo(f"{plan.name} pairs: {budget.line()}")
        for ex in budget.skipped_examples:
            log.info("skipped (%s)", ex)
        if not plan.rows:
            raise PovidError(f"no {plan.name} pair fits in --max-length {cfg.max_length} "
                             f"(the shortest needs more); raise --max-length")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "train_args.json", {"config": asdict(cfg), "family": family, "bf16": bf16,
                                          "stages": [{"name": p.name, "kind": p.kind, "epochs": p.epochs,
                                                      "rows": len(p.rows)} for p in plans],
                                          "token_budget": budget_lines})
    metrics_path = str(out / "metrics.jsonl")
    dirs = stage_dirs(out, plans)
    previous, offset, done = None, 0, []
    evals = {}
    for plan in plans:  # every stage is evaluated on each kind's held-out pairs
        plan.rows, held = split_eval(plan.rows, cfg.eval_fraction, cfg.seed)
        for kind, ev in held.items():
            evals.setdefault(kind, []).extend(ev)
    eval_sets = {kind: to_hf(ev) for kind, ev in sorted(evals.items())} or None
    for i, (plan, save_dir) in enumerate(zip(plans, dirs)):
        marker = save_dir / DONE
        if marker.exists():
            info = json.loads(marker.read_text())
            echo(f"stage {i + 1} ({plan.name}) already done in {save_dir}; skipping it")
            offset += info.get("steps", 0)
            previous = save_dir
            done.append(info)
            continue
        ckpt_dir = out / "checkpoints" / plan.name
        resume = cfg.resume and has_checkpoint(ckpt_dir)
        echo(f"stage {i + 1}/{len(plans)}: {len(plan.rows)} {plan.name} pairs, {plan.epochs:g} epoch(s)"
             + (f", resuming from {ckpt_dir}" if resume else "") + (f", starting from {previous}" if previous else ""))
        args = dpo_args(cfg, ckpt_dir, plan.epochs, bf16, eval_sets is not None)
        model = load_policy(cfg, previous, bf16)
        peft_config = None
        if not cfg.full and previous is None:
            from peft import LoraConfig

            peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                     target_modules=lora_targets(model), task_type="CAUSAL_LM")
        extra = {}
        trainer_cls = DPOTrainer
        if cfg.loss == "povid":
            from povid_cli.train.losses import PovidDPOTrainer

            trainer_cls = PovidDPOTrainer
            extra = {"povid_weight": cfg.povid_weight, "noise_step": cfg.noise_step}
        ref_model = None
        if cfg.full and previous is not None:  # TRL would reload the original base as the reference
            from transformers import AutoModelForImageTextToText

            ref_model = AutoModelForImageTextToText.from_pretrained(str(previous), dtype=model.dtype)
        trainer = trainer_cls(
            model=model, ref_model=ref_model, args=args, train_dataset=to_hf(plan.rows), eval_dataset=eval_sets,
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
                    "steps": steps, "lora": not cfg.full, "loss": cfg.loss}
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
