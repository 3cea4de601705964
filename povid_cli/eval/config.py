"""Every setting of `povid eval`, declared once: the command's flags and the checks come from here."""

from __future__ import annotations

import os
from dataclasses import dataclass

from povid_cli.backends.api_config import APIConfig
from povid_cli.core.errors import UsageError
from povid_cli.core.options import Options, group, opt
from povid_cli.eval.pope import SPLITS

BENCHMARKS = ("chair", "pope")
CHAIR_PROMPT = "Please describe this image in detail."
_D = "Data"
_M = "Model"


def _vlms() -> tuple[str, ...]:
    from povid_cli.backends import registry

    return ("auto",) + registry.names("vlm")


@dataclass(frozen=True)
class EvalConfig(Options):
    output: str | None = opt(None, "Results file (JSON); the answers and cache go beside it.", cli=False)
    model: str | None = opt(None, "The VLM: a model folder or hub name (--backend openai: the served name). Default "
                            "with --adapter: its base model.", short="-m", panel=_M)
    backend: str = opt("auto", "vllm, transformers or openai (an OpenAI-compatible server). auto: vllm when installed "
                       "with a GPU, else transformers.", short="-b", choices=_vlms, panel=_M)
    adapter: str | None = opt(None, "A LoRA adapter from `povid train` (OUT/final): transformers folds it into the "
                              "weights, vllm serves it with its LoRA support.", panel=_M)
    coco_instances: str | None = opt(None, "COCO instances file (instances_val2014.json): ground-truth objects, the "
                                     "POPE draws.", panel=_D)
    coco_captions: str | None = opt(None, "COCO captions file: objects the captions name count as ground truth for "
                                    "CHAIR too.", panel=_D)
    images: str | None = opt(None, "Folder with the images the annotations name (val2014/).", panel=_D)
    benchmarks: tuple[str, ...] = opt(BENCHMARKS, "Which benchmarks, comma-separated.", choices=BENCHMARKS, sep=",")
    n_images: int = opt(500, "Images per benchmark (per subset), drawn with --seed; all when fewer.", min=1)
    pope_splits: tuple[str, ...] = opt(SPLITS, "Absent-object draws, comma-separated.", choices=SPLITS, sep=",")
    pope_files: tuple[str, ...] = opt((), "A published POPE question file (JSON lines: question_id, image, text, "
                                      "label); repeat per split. Replaces the generated questions.", flag="--pope-file",
                                      panel=_D)
    subsets: tuple[str, ...] = opt((), "NAME=FILE: also report figures for these images (ids or file names, one a "
                                   "line, or a JSON list); repeatable. Only subset images are evaluated.",
                                   flag="--subset", panel=_D)
    seed: int = opt(0, "Seed of the image and absent-object draws.")
    prompt: str = opt(CHAIR_PROMPT, "The CHAIR instruction.")
    max_tokens: int = opt(512, "Most tokens per CHAIR description.", min=1)
    pope_max_tokens: int = opt(32, "Most tokens per POPE answer (its first words decide).", min=1)
    dtype: str = opt("auto", "Weights dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16.",
                     choices=("auto", "float32", "bfloat16", "float16"), panel=_M)
    batch_size: int | None = opt(None, "transformers: images per generate call [8]; vllm: most sequences at once.",
                                 min=1, panel=_M)
    tensor_parallel: int = opt(1, "vllm: GPUs to shard the model over.", min=1, flag="--tensor-parallel", short="--tp",
                               panel=_M)
    max_model_len: int | None = opt(None, "vllm: context length to reserve KV cache for.", min=16, panel=_M)
    cache: str | None = opt(None, "Answer cache folder [default: OUTPUT-stem.cache]; share it between runs of the "
                            "same model.")
    html: str | None = opt(None, "Also write an HTML page of the answers, hallucinated objects marked.")
    api: APIConfig = group(APIConfig, factory=lambda: APIConfig(timeout=120.0))

    def __post_init__(self):
        super().__post_init__()
        if not self.benchmarks:
            raise UsageError("--benchmarks: choose at least one of chair, pope")
        if not self.pope_splits:
            raise UsageError(f"--pope-splits: choose at least one of {', '.join(SPLITS)}")

    def subset_files(self) -> tuple[tuple[str, str], ...]:
        """(name, file) of each --subset NAME=FILE (a bare FILE is named after the file)."""
        out = []
        for value in self.subsets:
            name, sep, path = value.partition("=")
            if sep and name and "/" not in name and os.sep not in name:
                out.append((name, path))
            else:
                out.append((os.path.splitext(os.path.basename(value))[0], value))
        return tuple(out)
