"""`povid train DATA --model M -o OUT` and `povid merge ADAPTER -o OUT`"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from povid_cli.app import Limit, Verbose, command, console, out

CONFIGS = ("ddp", "zero2", "zero3", "fsdp")


def config_paths() -> dict[str, str]:
    """The accelerate configs shipped with povid (package data in povid_cli/train/configs/)."""
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent / "train" / "configs"
    return {name: str(here / f"{name}.yaml") for name in CONFIGS}


@command("train")
def train_cmd(
    data: Annotated[Optional[str], typer.Argument(help="A povid dataset (its `pairs`) or TRL Parquet (a file or folder, e.g. `povid export --format trl`).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The VLM to train: a local folder or a Hugging Face model id.")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Output folder: final/ (adapter or model + processor), checkpoints/, metrics.jsonl, metrics.png.")] = None,
    kind: Annotated[str, typer.Option("--kind", help="Which pairs: text (hallucinate), image (distort + sample) or all.")] = "all",
    schedule: Annotated[str, typer.Option("--schedule", help="povid: stage 1 on text pairs (3 epochs), then stage 2 on image pairs (1 epoch) from stage 1; mixed: one run over all selected pairs.")] = "povid",
    loss: Annotated[str, typer.Option("--loss", help="sigmoid (DPO), ipo, hinge, robust, or povid (DPO + POVID's noised-image argmax as a second rejected answer).")] = "sigmoid",
    beta: Annotated[float, typer.Option("--beta", help="DPO beta (KL strength).")] = 0.1,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", help="--loss robust: assumed fraction of flipped pairs.")] = 0.0,
    povid_weight: Annotated[float, typer.Option("--povid-weight", help="--loss povid: weight of the noised-image term (the plain DPO term gets 1 - w).")] = 0.5,
    sft_weight: Annotated[float, typer.Option("--sft-weight", min=0.0, help="Add this weight x the next-word loss on the chosen answer (RPO, TRL's rpo_alpha): keeps DPO from trading recall for fewer hallucinations (0: off).")] = 0.0,
    noise_step: Annotated[int, typer.Option("--noise-step", help="--loss povid: diffusion step t of the image noise (0..999).")] = 500,
    lora_r: Annotated[int, typer.Option("--lora-r", min=1, help="LoRA rank.")] = 128,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", min=1, help="LoRA alpha.")] = 256,
    full: Annotated[bool, typer.Option("--full", help="Train all weights instead of a LoRA adapter.")] = False,
    learning_rate: Annotated[float, typer.Option("--learning-rate", "--lr", help="Peak learning rate (cosine schedule, 3% warm-up).")] = 1e-7,
    epochs: Annotated[Optional[float], typer.Option("--epochs", help="Epochs per stage \\[default: 3 then 1 for --schedule povid, 1 for mixed].")] = None,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Stop each stage after N optimizer steps (-1: epochs decide).")] = -1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Pairs per device per step.")] = 1,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1, help="Gradient accumulation steps.")] = 1,
    max_length: Annotated[int, typer.Option("--max-length", min=0, help="Longest sequence (image + text tokens); longer rows get a smaller image or are skipped (0: no limit).")] = 1024,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bfloat16 weights and autocast \\[default: on with a CUDA GPU].", show_default=False)] = None,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="Trade compute for memory.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUT: finished stages are kept, a stage resumes from its last checkpoint.")] = False,
    report_to: Annotated[str, typer.Option("--report-to", help="none, tensorboard or wandb (metrics.jsonl is always written).")] = "none",
    eval_fraction: Annotated[float, typer.Option("--eval-fraction", help="Fraction of each kind held out for evaluation (0: none).")] = 0.05,
    eval_steps: Annotated[int, typer.Option("--eval-steps", min=1, help="Evaluate every N steps (and at the start and end of each stage).")] = 100,
    save_steps: Annotated[int, typer.Option("--save-steps", min=0, help="Checkpoint every N steps (the last 2 are kept; 0: none).")] = 200,
    logging_steps: Annotated[int, typer.Option("--logging-steps", min=1, help="Log training metrics every N steps.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed for data order, eval split, LoRA init and noise.")] = 42,
    merge: Annotated[bool, typer.Option("--merge", help="Also write OUT/merged: the base model with the LoRA adapter folded in.")] = False,
    configs: Annotated[bool, typer.Option("--configs", help="Print the paths of the shipped accelerate configs (ddp, zero2, zero3, fsdp) and exit.")] = False,
    limit: Limit = None,
    verbose: Verbose = 0,
):
    """Train a VLM with DPO on the pairs (TRL DPOTrainer, LoRA by default).

    Defaults follow POVID: LoRA r=128 alpha=256, lr 1e-7 (cosine, 3% warm-up), beta 0.1, stage 1 on text-hallucination pairs (3 epochs), then stage 2 on image-distortion pairs (1 epoch) from stage 1.

    Rows longer than --max-length get a smaller image or are skipped (counted in the log). Metrics (loss, reward margins and accuracies, per kind) go to OUT/metrics.jsonl and OUT/metrics.png; a killed run continues with --resume. Several GPUs: accelerate launch with a config from --configs (see the README).

    Examples:

      povid train data --model llava-hf/llava-1.5-7b-hf -o ckpt

      povid train export/trl --model Qwen/Qwen2-VL-2B-Instruct -o ckpt --schedule mixed --loss povid --lr 5e-7

      accelerate launch --config_file $(povid train --configs | grep zero2 | cut -f2) -m povid_cli train data --model M -o ckpt

      povid merge ckpt/final -o merged
    """
    if configs:
        for name, path in config_paths().items():
            typer.echo(f"{name}\t{path}")  # tab-separated for `cut -f2`
        return
    from povid_cli.core.errors import UsageError

    if not data or not model or not output:
        raise UsageError("povid train needs DATA, --model and -o OUT (see povid train --help)")
    from povid_cli.train.trainer import TrainConfig, run_train

    cfg = TrainConfig(
        data=data, model=model, output=output, kind=kind, schedule=schedule, loss=loss, beta=beta,
        label_smoothing=label_smoothing, povid_weight=povid_weight, sft_weight=sft_weight, noise_step=noise_step, lora_r=lora_r,
        lora_alpha=lora_alpha, full=full, learning_rate=learning_rate, epochs=epochs, max_steps=max_steps,
        batch_size=batch_size, grad_accum=grad_accum, max_length=max_length or None, bf16=bf16,
        gradient_checkpointing=gradient_checkpointing, resume=resume, report_to=report_to,
        eval_fraction=eval_fraction, eval_steps=eval_steps, save_steps=save_steps, logging_steps=logging_steps,
        seed=seed, limit=limit, merge=merge,
    )
    result = run_train(cfg, echo=lambda line: console.print(escape(line)))
    for name in ("eval_text_loss", "eval_image_loss", "eval_all_loss", "eval_text_rewards/margins",
                 "eval_image_rewards/margins", "eval_all_rewards/margins"):
        if name in result.metrics:
            m = result.metrics[name]
            console.print(f"{name}: {m['first']:.4f} -> {m['last']:.4f}")
    console.print(f"saved {'the model' if full else 'the LoRA adapter'} and processor to {escape(result.final)}"
                  + (f"; merged model in {escape(result.merged)}" if result.merged else ""))
    out.print(result.final)


@command("merge")
def merge_cmd(
    adapter: Annotated[str, typer.Argument(help="A LoRA adapter folder (e.g. OUT/final from povid train).", show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to save the merged model and its processor.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The base model \\[default: the one named in adapter_config.json].")] = None,
    verbose: Verbose = 0,
):
    """Fold a LoRA adapter into its base model and save a plain model (loadable by transformers or vLLM).

    Example:

      povid merge ckpt/final -o ckpt/merged
    """
    from povid_cli.train.trainer import merge_adapter

    path = merge_adapter(adapter, output, base=model)
    console.print(f"merged {escape(adapter)} into its base model: {escape(str(path))}")
    out.print(str(path))
