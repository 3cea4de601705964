"""Training metrics: `OUT/metrics.jsonl` (one line per Trainer log, per stage) and `OUT/metrics.png`.

Each line holds the Trainer's logs (`loss`, `rewards/margins`, `rewards/accuracies`, ... for training;
`eval_<kind>_loss`, `eval_<kind>_rewards/margins`, ... for the held-out pairs of each kind) plus
`stage` (text | image | all), `step` (within the stage) and `global_step` (across stages).
"""

from __future__ import annotations

import json
import math
import os

from transformers import TrainerCallback


class MetricsLogger(TrainerCallback):
    """Appends every log to metrics.jsonl (main process only), so a resumed run keeps its history."""

    def __init__(self, path: str, stage: str, step_offset: int = 0):
        self.path = path
        self.stage = stage
        self.step_offset = step_offset

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"stage": self.stage, "step": state.global_step, "global_step": self.step_offset + state.global_step,
               "epoch": state.epoch}
        row.update(per_kind(logs))
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def per_kind(logs: dict) -> dict:
    """TRL names only the loss after the eval set (`eval_text_loss`); name every eval metric after it."""
    logs = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    kinds = [k[len("eval_"):-len("_loss")] for k in logs if k.startswith("eval_") and k.endswith("_loss")
             and not k.endswith("/loss") and k not in ("eval_loss", "eval_dpo_loss", "eval_povid_loss")]
    if len(kinds) != 1:
        return logs
    prefix = f"eval_{kinds[0]}_"
    return {(prefix + k[len("eval_"):] if k.startswith("eval_") and not k.startswith(prefix) else k): v
            for k, v in logs.items()}


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def last_step(rows: list[dict], stage: str) -> int:
    return max((r["global_step"] for r in rows if r.get("stage") == stage), default=0)


def summary(rows: list[dict]) -> dict:
    """First and last value of the headline metrics: what `povid train` prints at the end."""
    out = {}
    keys = sorted({k for r in rows for k in r if k.endswith(("loss", "rewards/margins", "rewards/accuracies"))})
    for k in keys:
        vals = [r[k] for r in rows if k in r]
        if vals:
            out[k] = {"first": vals[0], "last": vals[-1]}
    return out


def plot(rows: list[dict], out_png: str) -> str | None:
    """Loss and reward margin against the global step: training, and each kind's eval split."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    keys = sorted({k for r in rows for k in r})
    for ax, metric, title in ((axes[0], "loss", "DPO loss"), (axes[1], "rewards/margins", "reward margin")):
        names = {metric: "train"}
        for key in keys:
            if key.startswith("eval_") and key.endswith("_" + metric):
                kind = key[len("eval_"):-len(metric) - 1]
                if not kind.endswith(("_dpo", "_povid", "povid/")):
                    names[key] = f"{kind} (eval)"
            elif key == f"eval_{metric}":
                names[key] = "eval"
        if metric == "rewards/margins" and "povid/rewards/margins" in keys:
            names["povid/rewards/margins"] = "noised-image argmax (train)"
        for key, name in names.items():
            colour = None
            for stage in dict.fromkeys(r["stage"] for r in rows):  # one segment per stage, one colour per series
                pts = [(r["global_step"], r[key]) for r in rows if key in r and r["stage"] == stage]
                if pts:
                    xs, ys = zip(*pts)
                    line, = ax.plot(xs, ys, marker="o" if "eval" in name else None, markersize=3, color=colour,
                                    label=name if colour is None else None)
                    colour = line.get_color()
        starts = []
        for r in rows:
            if not starts or starts[-1][0] != r["stage"]:
                starts.append((r["stage"], r["global_step"]))
        for name, x in starts[1:]:
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
            ax.text(x, ax.get_ylim()[1], f" {name}", va="top", fontsize=8, color="grey")
        if metric == "loss":
            ax.axhline(math.log(2), color="lightgrey", linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
