"""`povid train DATA --model M -o OUT` (options: povid_cli/train/config.py, TrainConfig) and `povid merge ADAPTER -o OUT`"""

from __future__ import annotations

import inspect
from typing import Annotated, Optional

import typer
from rich.markup import escape

from povid_cli.app import Verbose, command, console, out
from povid_cli.core import options
from povid_cli.train.config import TrainConfig


def specs_help(name: str) -> str:
    return next(s.help for s in options.specs(TrainConfig) if s.name == name)

CONFIGS = ("ddp", "zero2", "zero3", "fsdp")


def config_paths() -> dict[str, str]:
    """The accelerate configs shipped with povid (package data in povid_cli/train/configs/)."""
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent / "train" / "configs"
    return {name: str(here / f"{name}.yaml") for name in CONFIGS}


HELP = """Train a VLM with DPO on the pairs (TRL DPOTrainer, LoRA by default).

Defaults follow POVID: LoRA r=128 alpha=256, lr 1e-7 (cosine, 3% warm-up), beta 0.1, stage 1 on text-hallucination pairs (3 epochs), then stage 2 on image-distortion pairs (1 epoch) from stage 1.

Rows longer than --max-length get a smaller image or are skipped (counted in the log). Metrics (loss, reward margins and accuracies, per kind) go to OUT/metrics.jsonl and OUT/metrics.png; a killed run continues with --resume. Several GPUs: accelerate launch with a config from --configs (see the README).

Examples:

  povid train data --model llava-hf/llava-1.5-7b-hf -o ckpt

  povid train export/trl --model Qwen/Qwen2-VL-2B-Instruct -o ckpt --schedule mixed --loss povid --lr 5e-7

  accelerate launch --config_file $(povid train --configs | grep zero2 | cut -f2) -m povid_cli train data --model M -o ckpt

  povid merge ckpt/final -o merged
"""


def train_cmd(data: str | None = None, model: str | None = None, output: str | None = None, configs: bool = False,
              limit: int | None = None, verbose: int = 0, **kw):
    if configs:
        for name, path in config_paths().items():
            typer.echo(f"{name}\t{path}")  # tab-separated for `cut -f2`
        return
    from povid_cli.core.errors import UsageError

    if not data or not model or not output:
        raise UsageError("povid train needs DATA, --model and -o OUT (see povid train --help)")
    from povid_cli.train.trainer import run_train

    cfg = options.from_flags(TrainConfig, kw, data=data, model=model, output=output, limit=limit)
    result = run_train(cfg, echo=lambda line: console.print(escape(line)))
    for name in ("eval_text_loss", "eval_image_loss", "eval_all_loss", "eval_text_rewards/margins",
                 "eval_image_rewards/margins", "eval_all_rewards/margins"):
        if name in result.metrics:
            m = result.metrics[name]
            console.print(f"{name}: {m['first']:.4f} -> {m['last']:.4f}")
    console.print(f"saved {'the model' if cfg.full else 'the LoRA adapter'} and processor to {escape(result.final)}"
                  + (f"; merged model in {escape(result.merged)}" if result.merged else ""))
    out.print(result.final)


_P = inspect.Parameter
PARAMS = [
    _P("data", _P.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[Optional[str], typer.Argument(
        help=specs_help("data"), metavar="DATA", show_default=False)]),
    _P("model", _P.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[str], typer.Option(
        "--model", "-m", help=specs_help("model"))]),
    _P("output", _P.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[str], typer.Option(
        "--output", "-o", help=specs_help("output"))]),
    *options.typer_parameters(TrainConfig),
    _P("configs", _P.KEYWORD_ONLY, default=False, annotation=Annotated[bool, typer.Option(
        "--configs", help="Print the paths of the shipped accelerate configs (ddp, zero2, zero3, fsdp) and exit.")]),
    _P("limit", _P.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[int], typer.Option(
        "--limit", min=1, help=specs_help("limit"))]),
    _P("verbose", _P.KEYWORD_ONLY, default=0, annotation=Verbose),
]
command("train", help=HELP)(options.signature_command(train_cmd, PARAMS))


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
