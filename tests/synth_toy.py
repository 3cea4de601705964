"""Small, fast stand-ins for the synth stages, to test the pipeline's mechanics on their own.

They read and write the same outputs as the real stages (hallucinated, distorted, pairs + dropped)
and record every row they compute in $POVID_TOY_LOG (one line per row: "stage item_id"), so tests can
check which rows were recomputed. `use_toy_stages(monkeypatch)` points synth at them in-process;
`python tests/synth_toy.py synth ...` runs the CLI with them in a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass

import pyarrow as pa

from povid_cli.core.errors import RowError
from povid_cli.core.schemas import DISTORTED, HALLUCINATED, PAIRS
from povid_cli.core.stage import Result, Stage

DROPPED = pa.schema(list(PAIRS) + [pa.field("drop_reason", pa.string())])


def _log(stage: str, rows: list[dict]) -> None:
    path = os.environ.get("POVID_TOY_LOG")
    if path:
        with open(path, "a") as f:
            f.write("".join(f"{stage} {r.get('item_id') or r['id']}\n" for r in rows))
    delay = float(os.environ.get("POVID_TOY_DELAY", "0"))
    if delay:
        time.sleep(delay * len(rows))


@dataclass(frozen=True)
class ToyHallucinateConfig:
    backend: str = "rules"
    model: str = ""
    api_base: str = ""
    word: str = "fork"


class ToyHallucinate(Stage):
    name = "hallucinate"
    writes = ("hallucinated",)
    schemas = {"hallucinated": HALLUCINATED}
    Config = ToyHallucinateConfig
    batch_size = 4

    def process(self, batch):
        _log("hallucinate", batch.rows)
        def one(r):
            if "FAIL" in r["chosen"]:
                raise RowError("toy failure")
            return [{"id": f"{r['id']}-h0", "item_id": r["id"], "rejected": f"{r['chosen']} and a {self.config.word}",
                     "hallucination_types": ["object"], "edits": [], "backend": self.config.backend,
                     "model": self.config.model, "prompt_version": "toy"}]

        return Result.of(self.map_rows(batch.rows, one), usage={"prompt_tokens": 3 * len(batch.rows)})


@dataclass(frozen=True)
class ToyDistortConfig:
    methods: tuple[str, ...] = ("diffusion",)
    seed: int = 0


class ToyDistort(Stage):
    name = "distort"
    writes = ("distorted",)
    schemas = {"distorted": DISTORTED}
    Config = ToyDistortConfig
    batch_size = 4

    def process(self, batch):
        _log("distort", batch.rows)
        rows = []
        for r in batch.rows:
            for m in self.config.methods:
                rows.append({"id": f"{r['id']}-{m}", "item_id": r["id"], "variant": m, "image": r["image"],
                             "method": m, "params": "{}", "seed": self.config.seed})
        return Result({"distorted": rows})


@dataclass(frozen=True)
class ToySampleConfig:
    model: str = ""
    backend: str = "transformers"


class ToySample(Stage):  # only there so that synth can build it; the toy tests never give --vlm
    name = "sample"
    reads = ("items", "distorted")
    writes = ("sampled",)
    schemas = {"sampled": pa.schema([("id", pa.string())])}
    Config = ToySampleConfig


@dataclass(frozen=True)
class ToyFilterConfig:
    min_words: int = 3


class ToyFilter(Stage):
    name = "filter"
    reads = ("items", "hallucinated")
    optional_reads = ("sampled",)
    writes = ("pairs", "dropped")
    schemas = {"pairs": PAIRS, "dropped": DROPPED}
    Config = ToyFilterConfig
    batch_size = 4

    def process(self, batch):
        _log("filter", batch.rows)
        hall = batch.by_item("hallucinated")
        pairs, dropped = [], []
        for r in batch.rows:
            for h in hall.get(r["id"], []):
                pid = hashlib.sha256(f"{r['id']}\ntext\n{h['rejected']}".encode()).hexdigest()[:16]
                p = {"id": pid, "item_id": r["id"], "kind": "text", "prompt": r["prompt"], "chosen": r["chosen"],
                     "rejected": h["rejected"], "image": r["image"], "variant": None, "task": r["task"],
                     "source": r["source"], "source_id": r["source_id"]}
                if len(r["chosen"].split()) < self.config.min_words:
                    dropped.append({**p, "drop_reason": "too_short"})
                else:
                    pairs.append(p)
        return Result({"pairs": pairs, "dropped": dropped})


TOY_REFS = {
    "hallucinate": "synth_toy:ToyHallucinate",
    "distort": "synth_toy:ToyDistort",
    "sample": "synth_toy:ToySample",
    "filter": "synth_toy:ToyFilter",
}


def use_toy_stages(monkeypatch) -> None:
    from povid_cli.synth import plan

    monkeypatch.setattr(plan, "STAGE_REFS", dict(TOY_REFS))


if __name__ == "__main__":  # python tests/synth_toy.py synth SRC -o DATA ...
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from povid_cli.synth import plan
    from povid_cli.cli import app

    plan.STAGE_REFS.update(TOY_REFS)
    app(sys.argv[1:], prog_name="povid")
