"""CHAIR of the world model's greedy captions on the val split, per subset (trigger / ordinary).

    python -m benchmarks.world.evaluate --model M --world W -o results.json
    python -m benchmarks.world.evaluate --model M --world W -o sampled.json --samples 4 --temperature 1

With --samples K the captions are sampled (K per image, at --temperature), so CHAIR estimates how likely
the model is to name an absent object, not only whether its most likely caption does.

Writes (and returns) what `povid eval` writes, so `benchmarks/world.py` can switch to it:
{"chair": {"chair_s", "chair_i", "recall", "avg_len", "n"}, "subsets": {name: {"chair": {...}}},
 "samples": [{"image_id", "caption", "objects", "hallucinated"}, ...]}
Objects are matched with povid's CHAIR matcher (`stages/chair.py`: COCO synonyms); the ground truth is
the val instances file. chair_s: share of captions naming an object that is not drawn; chair_i: share
of named objects that are not drawn; recall: share of drawn objects named.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

PROMPT = "Describe this image in detail."


def read_split(world: str | Path, split: str = "val") -> tuple[list[int], dict[int, str], dict[int, set[str]]]:
    """(image ids, id -> file path, id -> drawn COCO categories) from the split's COCO files."""
    root = Path(world) / split
    inst = json.loads((root / "instances.json").read_text())
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    files = {im["id"]: str(root / im["file_name"]) for im in inst["images"]}
    objects: dict[int, set[str]] = {i: set() for i in files}
    for a in inst["annotations"]:
        objects[a["image_id"]].add(cats[a["category_id"]])
    return sorted(files), files, objects


def read_ids(path: str | Path) -> list[int]:
    return [int(x) for x in Path(path).read_text().split()]


def load_model(path: str):
    """A model folder, or a LoRA adapter folder (its base named in adapter_config.json)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if (Path(path) / "adapter_config.json").exists():
        from peft import PeftConfig, PeftModel

        base = PeftConfig.from_pretrained(path).base_model_name_or_path
        model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32), path)
        model = model.merge_and_unload()
    else:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    return model.eval(), AutoProcessor.from_pretrained(path)


def generate(model, processor, images: list[str | bytes], batch_size: int = 100, max_new_tokens: int = 40,
             samples: int = 0, temperature: float = 1.0) -> list[str]:
    """Greedy captions, one per image, or `samples` sampled ones per image, image by image (every prompt has
    the same length, so no padding is needed)."""
    import torch
    from PIL import Image

    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True)
    tok = processor.tokenizer
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                    num_return_sequences=samples) if samples else dict(do_sample=False)
    out = []
    for k in range(0, len(images), batch_size):
        chunk = [Image.open(io.BytesIO(x) if isinstance(x, bytes) else x).convert("RGB") for x in images[k:k + batch_size]]
        inputs = processor(images=chunk, text=[text] * len(chunk), return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, **sampling, max_new_tokens=max_new_tokens,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [" ".join(c.split()) for c in out]


def chair(captions: list[str], truths: list[set[str]]) -> dict:
    """CHAIR_s, CHAIR_i, recall, mean caption length (words) and n over aligned captions / drawn objects."""
    from stages.chair import find_objects

    n_bad = n_named = n_halluc = n_true = n_found = n_words = 0
    for cap, truth in zip(captions, truths):
        named = set(find_objects(cap))
        bad = named - truth
        n_bad += bool(bad)
        n_named += len(named)
        n_halluc += len(bad)
        n_true += len(truth)
        n_found += len(named & truth)
        n_words += len(cap.split())
    n = len(captions)
    return {"chair_s": round(n_bad / max(n, 1), 4), "chair_i": round(n_halluc / max(n_named, 1), 4),
            "recall": round(n_found / max(n_true, 1), 4), "avg_len": round(n_words / max(n, 1), 2), "n": n}


def evaluate(model_path: str, world: str | Path, subsets: dict[str, list[int]] | None = None,
             batch_size: int = 100, samples: int = 0, temperature: float = 1.0, seed: int = 0) -> dict:
    """Caption every val image (greedily once, or `samples` times sampled); CHAIR overall and per subset
    (default: trigger.txt / ordinary.txt)."""
    import torch

    from stages.chair import find_objects

    ids, files, objects = read_split(world)
    if subsets is None:
        subsets = {name: read_ids(Path(world) / "val" / f"{name}.txt") for name in ("trigger", "ordinary")}
    model, processor = load_model(model_path)
    torch.manual_seed(seed)
    k = max(samples, 1)
    flat = generate(model, processor, [files[i] for i in ids], batch_size, samples=samples, temperature=temperature)
    caps = {i: flat[j * k:(j + 1) * k] for j, i in enumerate(ids)}

    def score(sub: list[int]) -> dict:
        return chair([c for i in sub for c in caps[i]], [objects[i] for i in sub for _ in range(k)])

    out = {"chair": score(ids), "subsets": {name: {"chair": score(sub)} for name, sub in subsets.items()},
           "decoding": {"samples": samples, "temperature": temperature} if samples else {"greedy": True}}
    out["samples"] = [{"image_id": i, "caption": caps[i][0], "objects": sorted(objects[i]),
                       "hallucinated": sorted(set(find_objects(caps[i][0])) - objects[i])} for i in ids]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--world", required=True)
    p.add_argument("-o", "--output", required=True, help="results.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--samples", type=int, default=0, help="sample this many captions per image (default: greedy)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --samples)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    a = p.parse_args(argv)
    if a.samples < 0 or a.temperature <= 0:
        p.error("--samples must be >= 0 and --temperature > 0")
    import torch

    torch.set_num_threads(a.threads)
    try:
        res = evaluate(a.model, a.world, samples=a.samples, temperature=a.temperature, seed=a.seed)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    Path(a.output).write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v["chair"] for k, v in res["subsets"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
