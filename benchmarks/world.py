"""The model-level proof on CPU: povid's pairs cut a tiny VLM's hallucinations in a synthetic world.

    python benchmarks/world.py --seed 0                       # the default recipe (sigmoid+sft), ~5 min on 2 cores
    python benchmarks/world.py --seed 1 --recipe sigmoid -o runs/sigmoid-1.json
    python benchmarks/world.py --seed 0 --ci                  # the CI-sized world (tests/test_world.py)

The loop, through povid's own commands where povid has one:
1. make the world (benchmarks/world/make.py): COCO-format train/val files, trigger/ordinary val ids;
2. build the tiny LLaVA and SFT it from scratch on the SFT captions (partners sometimes named unseen);
3. eval before: greedy captions on val, CHAIR per subset (benchmarks/world/evaluate.py, or `povid eval`);
4. `povid synth` on the train split (true captions + instances; rules hallucinate -> text pairs), or with
   `--pair-images fresh` on as many new images drawn the same way (no label noise, never seen in SFT);
5. `povid train` from the SFT model (the recipe's loss, all weights);
6. eval after;
7. the control: the SFT model trained on the same pairs' chosen answers only, same steps, batch and lr;
   eval control.
Prints one JSON object: {"before": {"trigger": {"chair_s", "chair_i", "recall"}, "ordinary": {...}},
"after": {...}, "control": {...}, "config": {...}, "timings": {step: s}, "examples": [...], "wall_s"}.
A failing step prints one line naming it and its log, and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(k, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

from benchmarks.world.recipes import DEFAULT, RECIPES, synth_toml  # noqa: E402


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    recipe: str = DEFAULT
    # the world
    n_train: int = 12000
    n_val: int = 400
    pairs: int = 4
    p_unseen: float = 0.3
    # SFT from scratch
    sft_steps: int = 1000
    sft_batch: int = 64
    sft_lr: float = 1e-3
    # povid synth + train (and the control, which copies steps, batch and lr)
    dpo_items: int = 2000
    pair_images: str = "train"   # train: the SFT images (true captions) | fresh: new images of the same world
    n_rejected: int = 4
    dpo_steps: int = 300
    dpo_batch: int = 32
    dpo_lr: float = 5e-5
    beta: float = 0.1
    threads: int = 2


CI = dict(n_train=3000, n_val=120, pairs=2, sft_steps=400, dpo_items=600, dpo_steps=100, dpo_batch=16)


class StepError(Exception):
    pass


def run_cmd(name: str, cmd: list[str], log: Path) -> None:
    """Run a povid command (a subprocess, exactly as a user would); one line on failure."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               POVID_NO_PROGRESS="1")
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    if rc != 0:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
        raise StepError(f"{name} failed (exit {rc}): {lines[-1] if lines else 'no output'} (log: {log})")


def povid(*args) -> list[str]:
    return [sys.executable, "-m", "povid_cli", *map(str, args)]


def summary(results: dict) -> dict:
    """{subset: {chair_s, chair_i, recall}} from a results.json (povid eval's layout)."""
    return {name: {k: sub["chair"][k] for k in ("chair_s", "chair_i", "recall")}
            for name, sub in results["subsets"].items()}


def evaluate(model: Path, world: Path, folder: Path, how: str, log_dir: Path, n_val: int, threads: int) -> dict:
    """FOLDER/results.json of `model` on the world's val split: by `povid eval` (CHAIR from the COCO instances,
    one figure per --subset image-id list), or by the in-process evaluator (benchmarks/world/evaluate.py)."""
    from benchmarks.world.evaluate import PROMPT

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "results.json"
    if how == "povid":
        val = world / "val"
        run_cmd("povid eval", povid(
            "eval", "--model", model, "--backend", "transformers", "--dtype", "float32", "--benchmarks", "chair",
            "--coco-instances", val / "instances.json", "--images", val, "--n-images", n_val,
            "--subset", f"trigger={val / 'trigger.txt'}", "--subset", f"ordinary={val / 'ordinary.txt'}",
            "--prompt", PROMPT, "--max-tokens", 40, "--batch-size", 100, "-o", out), log_dir / f"{folder.name}.log")
        res = json.loads(out.read_text())
        res["samples"] = [{"image_id": a["image_id"], "caption": a.get("answer", ""), "objects": a.get("truth", []),
                           "hallucinated": a.get("hallucinated", [])}
                          for a in map(json.loads, out.with_suffix(".answers.jsonl").read_text().splitlines())
                          if a.get("benchmark") == "chair"]
        return res
    from benchmarks.world.evaluate import evaluate as local_eval

    res = local_eval(str(model), world)
    out.write_text(json.dumps(res, indent=2))
    return res


class Steps:
    """Runs the loop's steps, each in its own folder under `work`. A folder made earlier with the same settings
    (its `.step.json` key) is reused, so several recipes on one seed and `--work` share the world, the SFT
    model and the evals before; its time is then reported as "reused"."""

    def __init__(self, work: Path, echo):
        self.work, self.echo, self.timings = work, echo, {}

    def __call__(self, name: str, folder: str, key: dict, fn):
        path = self.work / folder
        marker = path / ".step.json"
        if marker.exists():
            saved = json.loads(marker.read_text())
            if saved["key"] == key:
                self.timings[name] = "reused"
                self.echo(f"[world] {name}: reused {path}")
                return saved["result"]
        shutil.rmtree(path, ignore_errors=True)
        t = time.time()
        self.echo(f"[world] {name} ...")
        result = fn(path)
        self.timings[name] = round(time.time() - t, 1)
        self.echo(f"[world] {name}: {self.timings[name]}s")
        path.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"key": key, "result": result}, default=str))
        return result


def run(cfg: RunConfig, work: Path, eval_how: str = "povid", echo=print) -> dict:
    """The whole loop in `work`; returns the result object (see the module docstring)."""
    import torch

    from benchmarks.world.make import WorldConfig, make_fresh, make_world
    from benchmarks.world.model import ModelConfig, build_world_vlm
    from benchmarks.world.sft import read_captions, read_chosen, train_sft

    torch.set_num_threads(cfg.threads)
    recipe = RECIPES[cfg.recipe]
    t0 = time.time()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    step = Steps(work, echo)
    c = asdict(cfg)

    k_world = {k: c[k] for k in ("seed", "n_train", "n_val", "pairs", "p_unseen")}
    world_cfg = WorldConfig(**k_world)
    step("make world", "world", k_world, lambda p: str(make_world(p, world_cfg)))
    world = work / "world"
    k_sft = {**k_world, **{k: c[k] for k in ("sft_steps", "sft_batch", "sft_lr")}, "model": asdict(ModelConfig(seed=cfg.seed))}

    def sft_fn(p: Path):
        init = build_world_vlm(work / "init", ModelConfig(seed=cfg.seed))
        return train_sft(str(init), str(p), *read_captions(world / "train" / "captions_sft.json"), steps=cfg.sft_steps,
                         batch_size=cfg.sft_batch, lr=cfg.sft_lr, seed=cfg.seed, log_every=max(1, cfg.sft_steps // 5),
                         echo=echo)

    sft_log = step("sft", "sft", k_sft, sft_fn)
    sft = work / "sft"
    before = step("eval before", "eval-before", k_sft, lambda p: evaluate(sft, world, p, eval_how, logs, cfg.n_val, cfg.threads))

    # povid synth: text pairs (rules) for every recipe; image pairs (the SFT model sampled on the
    # diffusion-noised images) when the recipe asks, so that data depends on the SFT model too
    kind = "all" if recipe.image_pairs else "text"
    fresh = "-fresh" if cfg.pair_images == "fresh" else ""  # folder suffix: both kinds of run share one --work
    source = world / "train"
    if fresh:
        step("fresh images", "fresh", {**k_world, "dpo_items": cfg.dpo_items},
             lambda p: str(make_fresh(p, world_cfg, cfg.dpo_items)))
        source = work / "fresh"
    k_data = {**(k_sft if recipe.image_pairs else k_world), "dpo_items": cfg.dpo_items, "n_rejected": cfg.n_rejected,
              "image_pairs": recipe.image_pairs, **({"pair_images": "fresh"} if fresh else {})}
    data = work / f"data-{kind}{fresh}"

    def synth_fn(p: Path):
        toml = work / f"povid-{kind}.toml"
        toml.write_text(synth_toml(cfg.n_rejected, sample=recipe.image_pairs))
        cmd = povid("synth", source / "captions.json", source / "instances.json", "-o", p,
                    "-c", toml, "--limit", cfg.dpo_items, "--workers", cfg.threads)
        if recipe.image_pairs:
            cmd += ["--vlm", str(sft), "--sample-backend", "transformers"]
        run_cmd("povid synth", cmd, logs / f"synth-{kind}{fresh}.log")
        return _count_pairs(p)

    n_pairs = step("povid synth", data.name, k_data, synth_fn)
    k_train = {**k_data, **{k: c[k] for k in ("dpo_steps", "dpo_batch", "dpo_lr", "beta")}}
    k_dpo = {**k_train, "recipe": recipe.train_flags()}

    def train_fn(p: Path):
        run_cmd("povid train", povid(
            "train", data, "--model", sft, "-o", p, "--full", "--lr", cfg.dpo_lr, "--beta", cfg.beta,
            "--max-steps", cfg.dpo_steps, "--batch-size", cfg.dpo_batch, "--eval-fraction", "0", "--save-steps", "0",
            "--max-length", "0", "--logging-steps", max(1, cfg.dpo_steps // 10), "--seed", cfg.seed, "--no-bf16",
            *recipe.train_flags()), logs / f"train-{cfg.recipe}{fresh}.log")
        return str(p / "final")

    dpo = Path(step("povid train", f"dpo-{cfg.recipe}{fresh}", k_dpo, train_fn))
    after = step("eval after", f"eval-after-{cfg.recipe}{fresh}", k_dpo,
                 lambda p: evaluate(dpo, world, p, eval_how, logs, cfg.n_val, cfg.threads))

    # the control: the same pairs' chosen answers, next-word loss only, with the DPO run's steps, batch, lr,
    # warm-up and AdamW settings (TRL's defaults: betas 0.9/0.999, no weight decay)
    k_ctrl = {**k_train, "sft": k_sft, "kind": kind}
    control = work / f"control-{kind}{fresh}"
    step("control sft", control.name, k_ctrl, lambda p: train_sft(
        str(sft), str(p), *read_chosen(str(data), kind), steps=cfg.dpo_steps, batch_size=cfg.dpo_batch, lr=cfg.dpo_lr,
        warmup=0.03, weight_decay=0.0, betas=(0.9, 0.999), seed=cfg.seed, log_every=max(1, cfg.dpo_steps // 5),
        echo=echo))
    ctrl = step("eval control", f"eval-{control.name}", k_ctrl,
                lambda p: evaluate(control, world, p, eval_how, logs, cfg.n_val, cfg.threads))

    examples = [{"image_id": b["image_id"], "objects": b["objects"], "before": b["caption"], "after": a["caption"],
                 "control": x["caption"]}
                for b, a, x in list(zip(before["samples"], after["samples"], ctrl["samples"]))[:4]]
    return {"before": summary(before), "after": summary(after), "control": summary(ctrl),
            "config": {**c, "pairs_trained_on": n_pairs, "sft_final_loss": sft_log["curve"][-1]["loss"],
                       "eval": eval_how},
            "timings": step.timings, "examples": examples, "wall_s": round(time.time() - t0, 1)}


def _count_pairs(data: Path) -> dict:
    from povid_cli.train.data import read_pairs

    kinds: dict[str, int] = {}
    for r in read_pairs(str(data)):
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    return kinds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    d = RunConfig()
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "recipe":
            p.add_argument(flag, default=d.recipe, choices=sorted(RECIPES))
        elif f.name == "pair_images":
            p.add_argument(flag, default=d.pair_images, choices=("train", "fresh"),
                           help="make the pairs from the SFT images with their true captions (train, default), or "
                                "from --dpo-items new images of the same world that SFT never saw (fresh)")
        else:
            p.add_argument(flag, type=type(getattr(d, f.name)), default=None,
                           help=f"default {getattr(d, f.name)} (--ci: {CI[f.name]})" if f.name in CI else f"default {getattr(d, f.name)}")
    p.add_argument("--ci", action="store_true", help="the CI-sized world and steps (about 1.5 min on 2 cores)")
    p.add_argument("--eval", dest="eval_how", choices=("povid", "local"), default="povid",
                   help="who computes CHAIR: `povid eval` (default), or benchmarks/world/evaluate.py in-process "
                        "(the same matcher, no subprocess)")
    p.add_argument("--work", help="keep everything in this folder and reuse the steps already done there with the "
                                  "same settings (default: a temporary folder, removed)")
    p.add_argument("-o", "--output", help="also write the JSON here")
    a = p.parse_args(argv)
    base = replace(d, **CI) if a.ci else d
    cfg = replace(base, **{f.name: getattr(a, f.name) for f in fields(RunConfig) if getattr(a, f.name) is not None})
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="povid-world-"))
    try:
        result = run(cfg, work, a.eval_how, echo=lambda line: print(line, file=sys.stderr, flush=True))
    except (StepError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if a.output:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
