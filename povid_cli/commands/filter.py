"""`povid filter DATA` (options: stages/filter.py, FilterConfig)"""

from __future__ import annotations

from povid_cli.app import console, reflow, stage_command
from stages.filter import FilterStage


HELP = """Keep the pairs that teach: DATA/pairs (kept) and DATA/dropped (with a drop_reason per row).

Candidates are every `hallucinated` answer and an item's own `rejected` (kind text), each of the n
`sampled` answers on a distorted image (kind image); with --kinds ...,contrast each `distorted` variant
(kind contrast: the ground truth under the clean image preferred over it under the distorted one; mDPO,
V-DPO, CHiP) and with --kinds ...,corrected every `corrected` answer (kind corrected: the correction
preferred to the model's own answer; see `povid correct`). Drop reasons, each on by default and tunable below: no_chosen,
empty, identical (up to case, whitespace and punctuation; a one-word object swap is a good pair),
refusal, truncated, repetition, too_short, rewritten (text pairs too far from chosen),
no_hallucination (text pairs need an object absent from the ground truth, CHAIR-style, or a changed
number / colour / attribute / relation), same_content (image pairs that say nothing new), off_policy,
duplicate / near_duplicate (MinHash over the whole dataset, first occurrence kept), and with --judge
judge_rejected / judge_unclear; for contrast pairs identical_image, weak_contrast (--min-image-change),
region_unmentioned (local noise on objects the answer does not name) and bad_image.

Scores (similarity, n_edits, hallucinated_objects, changed_attributes, repetition, logprob, judge
verdict) are stored on both tables, so you can re-filter with pandas without running anything again.
Shards run in order (first occurrence wins), and a run that finds new shards only filters those.

Examples:

  povid filter data

  povid filter data --min-similarity 0.6 --near-dup-threshold 0.8

  povid filter data --kinds text,image,contrast

  povid filter data --kinds text,image,corrected

  povid filter data --judge gpt-4o-mini --concurrency 32

  povid filter data --judge Qwen/Qwen2-VL-7B-Instruct --api-base http://127.0.0.1:8000/v1
"""


def _after(data, stage, run) -> None:
    if run.shards_run:
        from povid_cli.report.status import drop_reasons

        counts = drop_reasons(data)
        if counts:
            console.print("  dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))


stage_command("filter", FilterStage, help=reflow(HELP), run_flags=("limit", "retry_failed"), after=_after)
