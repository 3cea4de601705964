"""Everything `povid train` takes, declared once: the command's flags and the checks come from here.
Defaults follow the POVID repository (LoRA r=128, alpha=256, lr 1e-7, beta 0.1, 3 + 1 epochs)."""

from __future__ import annotations

from dataclasses import dataclass

from povid_cli.core.errors import UsageError
from povid_cli.core.options import Options, opt

LOSSES = ("sigmoid", "ipo", "hinge", "robust", "povid", "mdpo")
SCHEDULES = ("povid", "mixed")
REPORT_TO = ("none", "tensorboard", "wandb")
_L = "Loss"
_O = "Optimisation"
_E = "Evaluation, checkpoints, output"
_D = "Pair weights and curriculum"


@dataclass(frozen=True)
class TrainConfig(Options):
    data: str = opt(None, "A povid dataset (its `pairs`) or TRL Parquet (a file or folder, e.g. `povid export "
                    "--format trl`).", cli=False)
    model: str = opt(None, "The VLM to train: a local folder or a Hugging Face model id.", cli=False)
    output: str = opt(None, "Output folder: final/ (adapter or model + processor), checkpoints/, metrics.jsonl, "
                      "metrics.png.", cli=False)
    kind: str = opt("all", "Which pairs: text (hallucinate), image (distort + sample), contrast (the answer under "
                    "the clean vs a distorted image: filter --kinds ...,contrast) or all.",
                    choices=("text", "image", "contrast", "all"))
    schedule: str = opt("povid", "povid: stage 1 on text pairs (3 epochs), then stage 2 on image and contrast pairs "
                        "(1 epoch) from stage 1; mixed: one run over all selected pairs.", choices=SCHEDULES)
    loss: str = opt("sigmoid", "sigmoid (DPO), ipo, hinge, robust, povid (DPO + POVID's noised-image argmax as a "
                    "second rejected answer) or mdpo (DPO + mDPO's conditional term on the answer under a corrupted "
                    "image: the item's contrast image, else a random crop + the anchor term). Contrast pairs train "
                    "as image-contrast DPO under any of them.", choices=LOSSES, panel=_L)
    beta: float = opt(0.1, "DPO beta (KL strength).", min=0.0, panel=_L)
    label_smoothing: float = opt(0.0, "--loss robust: assumed fraction of flipped pairs.", min=0.0, max=0.49, panel=_L)
    povid_weight: float = opt(0.5, "--loss povid: weight of the noised-image term (the plain DPO term gets 1 - w).",
                              min=0.0, max=1.0, panel=_L)
    sft_weight: float = opt(0.0, "Add this weight x the next-word loss on the chosen answer (RPO, TRL's rpo_alpha): "
                            "keeps DPO from trading recall for fewer hallucinations (0: off).", min=0.0, panel=_L)
    noise_step: int = opt(500, "--loss povid: diffusion step t of the image noise.", min=0, max=999, panel=_L)
    weight_column: str | None = opt(None, "Multiply each pair's loss by this column (MMedPO; 0: no gradient; the "
                                    "--sft-weight term too): a pairs column, `weight` (filter --weight-by's score "
                                    "scaled to [0.2, 1] over the dataset, as export writes it), a TRL Parquet "
                                    "column or an ingested items column.", metavar="COL", panel=_D)
    curriculum: str | None = opt(None, "Curry-DPO: split each stage into K stages from easy to hard, each starting "
                                 "from and referenced on the previous one. Difficulty: chosen/rejected word "
                                 "similarity (more similar = harder), or score=NAME (higher = harder; -NAME: lower "
                                 "= harder). With --schedule povid: within each kind.", metavar="K[:score=NAME]",
                                 panel=_D)
    lora_r: int = opt(128, "LoRA rank.", min=1, panel=_O)
    lora_alpha: int = opt(256, "LoRA alpha.", min=1, panel=_O)
    lora_dropout: float = opt(0.05, "LoRA dropout.", min=0.0, max=0.99, panel=_O)
    full: bool = opt(False, "Train all weights instead of a LoRA adapter.", panel=_O)
    learning_rate: float = opt(1e-7, "Peak learning rate (cosine schedule, --warmup-ratio warm-up).", min=0.0,
                               short="--lr", panel=_O)
    epochs: float | None = opt(None, "Epochs per stage [default: 3 then 1 for --schedule povid, 1 for mixed].",
                               min=0.0, panel=_O)
    max_steps: int = opt(-1, "Stop each stage after N optimizer steps (-1: epochs decide).", min=-1, panel=_O)
    batch_size: int = opt(1, "Pairs per device per step.", min=1, panel=_O)
    grad_accum: int = opt(1, "Gradient accumulation steps.", min=1, panel=_O)
    max_length: int | None = opt(1024, "Longest sequence (image + text tokens); longer rows get a smaller image or are "
                                 "skipped (0: no limit).", min=0, panel=_O)
    bf16: bool | None = opt(None, "bfloat16 weights and autocast [default: on with a CUDA GPU].", panel=_O)
    gradient_checkpointing: bool = opt(False, "Trade compute for memory.", panel=_O)
    warmup_ratio: float = opt(0.03, "Fraction of the steps spent warming the learning rate up.", min=0.0, max=1.0,
                              panel=_O)
    seed: int = opt(42, "Seed for data order, eval split, LoRA init and noise.", panel=_O)
    num_workers: int = opt(0, "DataLoader worker processes.", min=0, panel=_O)
    resume: bool = opt(False, "Continue the run in OUT: finished stages are kept, a stage resumes from its last "
                       "checkpoint.", panel=_E)
    report_to: str = opt("none", "none, tensorboard or wandb (metrics.jsonl is always written).", choices=REPORT_TO,
                         panel=_E)
    eval_fraction: float = opt(0.05, "Fraction of each kind held out for evaluation (0: none).", min=0.0, max=0.95,
                               panel=_E)
    eval_steps: int = opt(100, "Evaluate every N steps (and at the start and end of each stage).", min=1, panel=_E)
    save_steps: int = opt(200, "Checkpoint every N steps (the last 2 are kept; 0: none, and no --resume inside a "
                          "stage).", min=0, panel=_E)
    logging_steps: int = opt(10, "Log training metrics every N steps.", min=1, panel=_E)
    limit: int | None = opt(None, "Train on the first N pairs of each stage (to try things out).", min=1, cli=False)
    merge: bool = opt(False, "Also write OUT/merged: the base model with the LoRA adapter folded in.", panel=_E)

    def __post_init__(self):
        super().__post_init__()
        from povid_cli.train.plan import parse_curriculum

        parse_curriculum(self.curriculum)  # a bad spec is one line before anything loads
        if self.max_length == 0:
            object.__setattr__(self, "max_length", None)
        if self.merge and self.full:
            raise UsageError("--merge folds a LoRA adapter into the base model; with --full the saved model is already whole")
