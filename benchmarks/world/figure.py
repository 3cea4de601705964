"""The README figure and table from `benchmarks/world.py` results.

    python -m benchmarks.world.figure runs/*.json --png docs/world.png --md docs/world.md

Input: result files of `benchmarks/world.py -o FILE` (one per recipe and seed). Output: a PNG with three
panels (trigger CHAIR_s, trigger recall, ordinary recall; before / after / control per recipe, the bar
= the mean over seeds, a dot per seed) and a markdown table with every run's figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

PANELS = (("trigger", "chair_s", "trigger CHAIR_s (lower is better)"),
          ("trigger", "recall", "trigger recall"), ("ordinary", "recall", "ordinary recall"))
PHASES = (("before", "SFT (before)", "#9e9e9e"), ("after", "povid pairs (after)", "#1f77b4"),
          ("control", "control: SFT on chosen", "#ff7f0e"))


def label(config: dict) -> str:
    """The recipe, marked when its pairs came from fresh images (--pair-images fresh)."""
    return config["recipe"] + (" (fresh)" if config.get("pair_images", "train") == "fresh" else "")


def load(paths: list[str]) -> dict[str, list[dict]]:
    """recipe label -> runs (sorted by seed)."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for p in paths:
        r = json.loads(Path(p).read_text())
        runs[label(r["config"])].append(r)
    return {k: sorted(v, key=lambda r: r["config"]["seed"]) for k, v in sorted(runs.items())}


def plot(runs: dict[str, list[dict]], png: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = list(runs)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(max(4.2, 0.8 * len(recipes)) * len(PANELS), 3.8), sharey=True)
    width = 0.8 / len(PHASES)
    for ax, (subset, metric, title) in zip(axes, PANELS):
        for j, (phase, label, colour) in enumerate(PHASES):
            xs = [i + (j - 1) * width for i in range(len(recipes))]
            vals = [[r[phase][subset][metric] for r in runs[rc]] for rc in recipes]
            ax.bar(xs, [sum(v) / len(v) for v in vals], width, color=colour, label=label)
            for x, v in zip(xs, vals):
                ax.scatter([x] * len(v), v, s=9, color="black", zorder=3)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(recipes)))
        ax.set_xticklabels(recipes, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    seeds = sorted({r["config"]["seed"] for v in runs.values() for r in v})
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(PHASES), fontsize=8, frameon=False)
    fig.suptitle(f"Synthetic world, tiny LLaVA: bars = mean over seeds {seeds}, dots = seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def table(runs: dict[str, list[dict]]) -> str:
    head = ("| recipe | seed | trigger CHAIR_s before → after (control) | trigger CHAIR_i before → after "
            "| trigger recall before → after (control) | ordinary recall before → after (control) "
            "| wall s (steps run) |\n"
            "|---|---|---|---|---|---|---|\n")
    rows = []
    for recipe, rs in runs.items():
        for r in rs:
            b, a, c = r["before"], r["after"], r["control"]
            rows.append(
                f"| {recipe} | {r['config']['seed']} "
                f"| {b['trigger']['chair_s']:.2f} → **{a['trigger']['chair_s']:.2f}** ({c['trigger']['chair_s']:.2f}) "
                f"| {b['trigger']['chair_i']:.2f} → {a['trigger']['chair_i']:.2f} "
                f"| {b['trigger']['recall']:.2f} → {a['trigger']['recall']:.2f} ({c['trigger']['recall']:.2f}) "
                f"| {b['ordinary']['recall']:.2f} → {a['ordinary']['recall']:.2f} ({c['ordinary']['recall']:.2f}) "
                f"| {r['wall_s']:.0f} |")
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="JSON files written by benchmarks/world.py -o")
    p.add_argument("--png", required=True)
    p.add_argument("--md", help="write the markdown table here (default: print it)")
    a = p.parse_args(argv)
    try:
        runs = load(a.results)
        plot(runs, a.png)
    except ImportError:
        print("error: the figure needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    md = table(runs)
    if a.md:
        Path(a.md).write_text(md)
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
