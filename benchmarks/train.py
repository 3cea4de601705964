"""`povid train` against a plain TRL DPOTrainer script: same data, model and settings, same run.

    python benchmarks/train.py                        # tiny random Qwen2-VL on CPU (LoRA), 24 steps
    python benchmarks/train.py --family llava --full
    python benchmarks/train.py --arch 2b --bf16 --steps 50 --batch-size 4     # on a GPU: random-init Qwen2-VL-2B
    python benchmarks/train.py --weights              # povid with per-pair weights (--weight-column) vs plain TRL
    python benchmarks/train.py --loss sigmoid,mdpo,povid   # several povid losses in one run, each next to TRL

Each side runs in its own subprocess (clean peak-memory figures): `povid` calls `povid_cli.train.trainer.run_train`
on a povid dataset; `trl` is the script a TRL user writes: `load_dataset("parquet")` of the same pairs
exported with `povid export --format trl` + `DPOTrainer(processing_class=processor, peft_config=...)`.
Figures are the training loop only (Trainer's train_runtime), so povid's one-off token-budget check is
reported apart. Prints one JSON object: per povid loss its figures, `ratio_*` (povid / trl) and `cost_vs_sigmoid`
(CPU seconds per sample of that loss / those of povid's sigmoid, when sigmoid is in the run: what a step of mdpo
or povid costs next to plain DPO). `--loss mdpo` trains on image pairs without contrast images, so every
conditional row is mDPO's random crop.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


def build_model(out: Path, family: str, arch: str) -> Path:
    from tiny_vlms import build_tiny_vlm

    path = build_tiny_vlm(out / f"tiny-{family}", family)
    if arch == "tiny":
        return path
    # a random-init model with the real Qwen2-VL-2B shapes (no download): the tiny folder's processor
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    if family != "qwen2_vl":
        raise SystemExit("--arch 2b is Qwen2-VL-2B: use --family qwen2_vl")
    cfg = AutoConfig.from_pretrained(path)
    t = cfg.text_config
    t.hidden_size, t.intermediate_size, t.num_hidden_layers = 1536, 8960, 28
    t.num_attention_heads, t.num_key_value_heads, t.vocab_size = 12, 2, 151936
    t.tie_word_embeddings = cfg.tie_word_embeddings = True  # as Qwen2-VL-2B: 2.2B parameters
    if getattr(t, "layer_types", None):
        t.layer_types = ["full_attention"] * t.num_hidden_layers
    t.rope_parameters = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}
    v = cfg.vision_config
    v.depth, v.embed_dim, v.hidden_size, v.num_heads, v.mlp_ratio = 32, 1280, 1536, 16, 4
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16)
    big = out / "qwen2_vl-2b-random"
    model.save_pretrained(big)
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(path)
    proc.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}  # 448 px: 256 image tokens
    proc.save_pretrained(big)
    return big


def build_data(out: Path, n: int, size: int = 112) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from test_train import pair_rows

    from povid_cli.core.schemas import PAIRS
    from povid_cli.core.store import Dataset, digest
    from povid_cli.export.formats import TRL, hf_features, to_trl

    rows = pair_rows(n, kinds=("image",), size=size)
    for i, r in enumerate(rows):  # MMedPO-like weights in [0.2, 1], used by the povid side with --weights
        r["weight"] = 0.2 + 0.8 * (i % 5) / 4
    ds = Dataset.open_or_create(str(out / "data"))
    ds.commit_shard("filter", "pairs", 0, pa.Table.from_pylist(rows, schema=PAIRS.append(pa.field("weight", pa.float64()))),
                    digest([r["id"] for r in rows]))
    data = out / "data"
    (out / "trl").mkdir(exist_ok=True)
    # as `povid export --format trl` writes it: `datasets` metadata so load_dataset decodes the images
    table = pa.Table.from_pylist(to_trl(rows), schema=TRL)
    table = table.replace_schema_metadata({"huggingface": json.dumps(hf_features(TRL, {"images": "List"}))})
    pq.write_table(table, out / "trl" / "train.parquet")
    return data, out / "trl" / "train.parquet"


def peak_memory_mb() -> dict:
    import torch

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


class Timer:
    """Captures the Trainer's own figures for the training loop."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                timer.t0, timer.c0 = time.perf_counter(), time.process_time()

            def on_train_end(self, args, state, control, **kw):
                timer.seconds = time.perf_counter() - timer.t0
                timer.cpu_seconds = time.process_time() - timer.c0
                timer.steps = state.global_step
                timer.tokens = next((h["num_tokens"] for h in reversed(state.log_history) if "num_tokens" in h), None)

        self.callback = CB()


def worker(a) -> dict:
    import torch

    timer = Timer()
    bf16 = bool(a.bf16)
    t0 = time.perf_counter()
    if a.worker == "povid":
        from povid_cli.train.trainer import TrainConfig, run_train

        cfg = TrainConfig(data=a.data, model=a.model, output=a.out, schedule="mixed", loss=a.loss, lora_r=a.lora_r,
                          lora_alpha=2 * a.lora_r, full=a.full, learning_rate=1e-4, max_steps=a.steps,
                          batch_size=a.batch_size, max_length=a.max_length, bf16=bf16, eval_fraction=0.0,
                          save_steps=0, logging_steps=a.steps, seed=0, epochs=100,
                          weight_column="weight" if a.weights else None)
        run_train(cfg, echo=lambda s: None, trainer_callbacks=[timer.callback])
    else:
        import datasets
        from peft import LoraConfig
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from trl import DPOConfig, DPOTrainer

        from povid_cli.train.trainer import lora_targets

        ds = datasets.load_dataset("parquet", data_files=a.data, split="train")
        model = AutoModelForImageTextToText.from_pretrained(a.model, dtype=torch.bfloat16 if bf16 else torch.float32)
        processor = AutoProcessor.from_pretrained(a.model)
        peft_config = None if a.full else LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.05,
                                                     target_modules=lora_targets(model), task_type="CAUSAL_LM")
        args = DPOConfig(output_dir=a.out, per_device_train_batch_size=a.batch_size, learning_rate=1e-4,
                         lr_scheduler_type="cosine", warmup_steps=0.03, max_steps=a.steps, num_train_epochs=100,
                         beta=0.1, max_length=a.max_length, bf16=bf16, use_cpu=not torch.cuda.is_available(),
                         gradient_checkpointing=False, logging_steps=a.steps, save_strategy="no", report_to=[],
                         seed=0, data_seed=0)
        trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=processor,
                             peft_config=peft_config, callbacks=[timer.callback])
        trainer.train()
    total = time.perf_counter() - t0
    samples = timer.steps * a.batch_size
    return {"train_seconds": round(timer.seconds, 3), "steps": timer.steps,
            "samples_per_s": round(samples / timer.seconds, 3),
            # CPU time of the process: steadier than wall time on a machine shared with other jobs
            "train_cpu_seconds": round(timer.cpu_seconds, 3), "samples_per_cpu_s": round(samples / timer.cpu_seconds, 3),
            "tokens_per_s": round(timer.tokens / timer.seconds, 1) if timer.tokens else None,
            "wall_seconds": round(total, 2), **peak_memory_mb()}


def run_side(side: str, loss: str, a, model: Path, data: Path, trl: Path, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--model", str(model),
           "--data", str(data if side == "povid" else trl), "--out", str(tmp / f"out-{side}"),
           "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--lora-r", str(a.lora_r),
           "--max-length", str(a.max_length), "--loss", loss] + (["--full"] if a.full else []) + (["--bf16"] if a.bf16 else []) \
        + (["--weights"] if a.weights else [])
    env = dict(os.environ)
    if a.threads:  # one thread on CPU: CPU-time figures that other jobs on the machine do not disturb
        env.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{side} ({loss}) failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="qwen2_vl", choices=["qwen2_vl", "qwen2_5_vl", "llava", "idefics3"])
    ap.add_argument("--arch", default="tiny", choices=["tiny", "2b"])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--loss", default="sigmoid", help="povid's loss, or several comma-separated (sigmoid,mdpo,povid); "
                    "the baseline is always plain sigmoid DPO with TRL")
    ap.add_argument("--weights", action="store_true", help="povid trains with per-pair weights (--weight-column)")
    ap.add_argument("--repeats", type=int, default=5, help="alternate the sides this many times; best of each")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP threads per side [default: 1 on CPU, unset on GPU]")
    ap.add_argument("--worker", choices=["povid", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a)))
        return
    import shutil

    import torch

    losses = [x.strip() for x in a.loss.split(",") if x.strip()]
    if a.threads is None and not torch.cuda.is_available():
        a.threads = 1
    sides = [("trl", "sigmoid")] + [("povid", loss) for loss in losses]
    results: dict[tuple[str, str], list[dict]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = build_model(tmp, a.family, a.arch)
        data, trl = build_data(tmp, a.pairs, 448 if a.arch == "2b" else 112)
        for i in range(a.repeats):
            k = i % len(sides)  # rotate the order: no side always runs first on a warm (or busy) machine
            for side, loss in sides[k:] + sides[:k]:
                shutil.rmtree(tmp / f"out-{side}", ignore_errors=True)
                results[(side, loss)].append(run_side(side, loss, a, model, data, trl, tmp))
    best = {s: max(rs, key=lambda r: r["samples_per_s"]) for s, rs in results.items()}
    base = best[("trl", "sigmoid")]
    mem = "peak_gpu_mb" if "peak_gpu_mb" in base else "peak_rss_mb"
    speed = "samples_per_cpu_s" if a.threads else "samples_per_s"  # CPU time on a shared CPU, wall time on a GPU
    povid = {loss: best[("povid", loss)] for loss in losses}
    out = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "model": f"{a.family}-{a.arch}", "mode": "full" if a.full else f"lora r={a.lora_r}",
        "bf16": a.bf16, "losses": losses, "weights": a.weights, "threads": a.threads, "steps": a.steps,
        "batch_size": a.batch_size, "repeats": a.repeats, "trl": base, "povid": povid,
        "ratio_samples_per_s": {k: round(v["samples_per_s"] / base["samples_per_s"], 3) for k, v in povid.items()},
        "ratio_samples_per_cpu_s": {k: round(v["samples_per_cpu_s"] / base["samples_per_cpu_s"], 3)
                                    for k, v in povid.items()},
        f"ratio_{mem}": {k: round(v[mem] / base[mem], 3) for k, v in povid.items()},
    }
    if "sigmoid" in povid:
        out["cost_vs_sigmoid"] = {k: round(povid["sigmoid"][speed] / v[speed], 3) for k, v in povid.items()}
        out["cost_measure"] = speed
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
