"""Write the world as COCO-format files, read by `povid ingest` / `povid synth` (and `povid eval`) as COCO is.

    python -m benchmarks.world.make OUT [--seed 0] [--p-unseen 0.3] [--pairs 4] [--n-train 12000] [--n-val 400]

OUT/
  world.json                        # the settings and the type table
  train/images/000001.png ...
  train/captions.json               # COCO captions: the TRUE caption (what is drawn); povid's chosen answers
  train/captions_sft.json           # the SFT captions: partners sometimes named but not drawn (p_unseen)
  train/instances.json              # COCO instances: a box [x, y, w, h] and category id per drawn object
  val/images/...  val/captions.json  val/instances.json
  val/trigger.txt  val/ordinary.txt # image ids, one a line: an anchor without its partner / the rest

`make_fresh` writes another split of the same kind (fresh images, true captions, no label noise) for
`benchmarks/world.py --pair-images fresh`: pairs made from images the SFT model never saw.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.world.glyphs import BY_NAME, LONERS, TYPES, draw
from benchmarks.world.scenes import Scene, ordinary_scene, pairs_used, train_scene, trigger_scene, world_types


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    n_train: int = 12000
    n_val: int = 400            # half trigger, half ordinary
    image_size: int = 64
    pairs: int = 4              # how many (anchor, partner) pairs are in play (1..4)
    p_cooccur: float = 0.9      # a pair member brings its partner along
    p_unseen: float = 0.3       # in a pair, the partner is named by the SFT caption but not drawn


PROMPT = "Describe this image in detail."  # povid's default prompt for COCO captions (ingest)


def _coco(scenes: list[Scene], files: list[str], size: int, sft: bool = False) -> dict:
    images = [{"id": i + 1, "file_name": f, "width": size, "height": size} for i, f in enumerate(files)]
    anns = [{"id": i + 1, "image_id": i + 1, "caption": s.sft_caption if sft else s.caption}
            for i, s in enumerate(scenes)]
    return {"info": {"description": "povid synthetic world"}, "images": images, "annotations": anns}


def _instances(boxes: list[list[tuple[str, list[int]]]], files: list[str], size: int, names: list[str]) -> dict:
    images = [{"id": i + 1, "file_name": f, "width": size, "height": size} for i, f in enumerate(files)]
    anns, k = [], 0
    for i, objs in enumerate(boxes):
        for name, box in objs:
            k += 1
            anns.append({"id": k, "image_id": i + 1, "category_id": BY_NAME[name].coco_id, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    cats = [{"id": BY_NAME[n].coco_id, "name": n, "supercategory": "world"} for n in names]
    return {"images": images, "annotations": anns, "categories": cats}


def write_split(out: Path, scenes: list[Scene], size: int, np_rng: np.random.Generator, names: list[str],
                sft: bool) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    files, boxes = [], []
    for i, s in enumerate(scenes):
        im, bxs = draw(s.drawn, size, np_rng)
        f = f"images/{i + 1:06d}.png"
        im.save(out / f)
        files.append(f)
        boxes.append(list(zip(s.drawn, bxs)))
    _write(out / "captions.json", _coco(scenes, files, size))
    if sft:
        _write(out / "captions_sft.json", _coco(scenes, files, size, sft=True))
    _write(out / "instances.json", _instances(boxes, files, size, names))


def _write(path: Path, obj) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def make_world(out: str | Path, cfg: WorldConfig) -> Path:
    """Write the world described by `cfg` into `out` (created); returns `out`. Deterministic per cfg."""
    out = Path(out)
    pairs_used(cfg.pairs)  # validates
    if not (0 <= cfg.p_unseen <= 1 and 0 <= cfg.p_cooccur <= 1):
        raise ValueError("--p-unseen and --p-cooccur must be in [0, 1]")
    if cfg.n_train < 1 or cfg.n_val < 2 or cfg.image_size < 32:
        raise ValueError("need --n-train >= 1, --n-val >= 2 and --image-size >= 32")
    rng = random.Random(f"world:{cfg.seed}")
    np_rng = np.random.default_rng(cfg.seed)
    names = world_types(cfg.pairs)
    train = [train_scene(rng, cfg.pairs, cfg.p_cooccur, cfg.p_unseen) for _ in range(cfg.n_train)]
    n_trig = cfg.n_val // 2
    val = [trigger_scene(rng, cfg.pairs) for _ in range(n_trig)]
    val += [ordinary_scene(rng, cfg.pairs, cfg.p_cooccur) for _ in range(cfg.n_val - n_trig)]
    write_split(out / "train", train, cfg.image_size, np_rng, names, sft=True)
    write_split(out / "val", val, cfg.image_size, np_rng, names, sft=False)
    (out / "val" / "trigger.txt").write_text("".join(f"{i + 1}\n" for i in range(n_trig)))
    (out / "val" / "ordinary.txt").write_text("".join(f"{i + 1}\n" for i in range(n_trig, cfg.n_val)))
    info = {"config": asdict(cfg), "prompt": PROMPT, "pairs": [list(p) for p in pairs_used(cfg.pairs)],
            "loners": list(LONERS), "types": [asdict(t) for t in TYPES if t.name in names],
            "stats": stats(train, cfg.pairs)}
    _write(out / "world.json", info)
    return out


def make_fresh(out: str | Path, cfg: WorldConfig, n: int) -> Path:
    """OUT/{images, captions.json, instances.json}: `n` training-like scenes drawn anew (their own random
    streams, so the world's files do not change), captioned truly: partners co-occur as in training, none is
    named unseen. Returns `out`."""
    out = Path(out)
    if n < 1:
        raise ValueError("need at least one fresh image")
    rng = random.Random(f"fresh:{cfg.seed}")
    scenes = [train_scene(rng, cfg.pairs, cfg.p_cooccur, 0.0) for _ in range(n)]
    write_split(out, scenes, cfg.image_size, np.random.default_rng([cfg.seed, 1]), world_types(cfg.pairs), sft=False)
    _write(out / "stats.json", stats(scenes, cfg.pairs))
    return out


def stats(scenes: list[Scene], n_pairs: int) -> dict:
    """How often a drawn anchor is alone, and how often the SFT caption then names the partner."""
    alone = named = 0
    for s in scenes:
        for a, b in pairs_used(n_pairs):
            if a in s.drawn and b not in s.drawn:
                alone += 1
                named += b in s.unseen
    return {"anchor_alone": alone, "partner_named_when_alone": round(named / max(alone, 1), 3),
            "mean_objects": round(sum(len(s.drawn) for s in scenes) / max(len(scenes), 1), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    d = WorldConfig()
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--n-val", type=int, default=d.n_val)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--pairs", type=int, default=d.pairs)
    p.add_argument("--p-cooccur", type=float, default=d.p_cooccur)
    p.add_argument("--p-unseen", type=float, default=d.p_unseen)
    a = p.parse_args(argv)
    cfg = WorldConfig(seed=a.seed, n_train=a.n_train, n_val=a.n_val, image_size=a.image_size, pairs=a.pairs,
                      p_cooccur=a.p_cooccur, p_unseen=a.p_unseen)
    try:
        make_world(a.out, cfg)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
