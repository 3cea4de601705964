"""Supervised next-word training of the world VLM: from scratch on the SFT captions, or (the control) on
the chosen answers of povid's pairs, starting from the SFT model.

    python -m benchmarks.world.sft --model INIT --captions W/train/captions_sft.json -o OUT --steps 1500
    python -m benchmarks.world.sft --model SFT --pairs DATA -o CONTROL --steps 300 --lr 5e-5 --batch-size 32

Input: a model folder (`build_world_vlm` or a trained one), and either a COCO captions JSON (images
relative to its folder) or a povid dataset (its `pairs`: image + chosen). Output: OUT with the model
(save_pretrained, vLLM key layout) + processor, and OUT/sft.json (settings, loss curve, wall time).

The sequence is exactly what TRL's DPO collator builds for the same row: the chat-template prompt with
the image token expanded, then the answer and <|im_end|>; the loss is the mean next-word loss over the
answer tokens. Images are normalised once into a float tensor (CLIP mean/std, as the processor does).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

PROMPT = "Describe this image in detail."


def read_captions(path: str | Path) -> tuple[list[bytes], list[str]]:
    """(PNG bytes, caption) per image of a COCO captions JSON (the longest caption, as povid ingest keeps)."""
    path = Path(path)
    data = json.loads(path.read_text())
    files = {im["id"]: im["file_name"] for im in data["images"]}
    best: dict[int, str] = {}
    for a in data["annotations"]:
        if a["image_id"] not in best or len(a["caption"]) > len(best[a["image_id"]]):
            best[a["image_id"]] = a["caption"]
    ids = sorted(best)
    return [(path.parent / files[i]).read_bytes() for i in ids], [best[i] for i in ids]


def read_chosen(data: str, kind: str = "all") -> tuple[list[bytes], list[str]]:
    """(image bytes, chosen answer) per pair of a povid dataset (of one `kind`, or all): what the DPO run
    sees as chosen."""
    from povid_cli.train.data import read_pairs, select_kind

    rows = select_kind(read_pairs(data), kind, data)
    return [r["images"][0]["bytes"] for r in rows], [r["chosen"][-1]["content"] for r in rows]


def pixel_tensor(images: list[bytes], processor):
    """uint8 PNGs -> normalised float tensor (N, 3, H, W), as the CLIP image processor makes it."""
    import numpy as np
    import torch
    from PIL import Image

    ip = processor.image_processor
    side = ip.crop_size["height"]
    def load(b: bytes):
        im = Image.open(io.BytesIO(b)).convert("RGB")
        return im if im.size == (side, side) else im.resize((side, side), Image.BICUBIC)  # the world is square

    arr = np.stack([np.asarray(load(b)) for b in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


def prompt_ids(processor) -> list[int]:
    """The token ids of the chat prompt with the image placeholder expanded (the same for every row)."""
    from PIL import Image

    side = processor.image_processor.crop_size["height"]
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True)
    return list(processor(images=[Image.new("RGB", (side, side))], text=[text])["input_ids"][0])


def answer_ids(processor, answers: list[str]) -> list[list[int]]:
    tok = processor.tokenizer
    return [ids + [tok.eos_token_id] for ids in tok(answers, add_special_tokens=False)["input_ids"]]


def batch(prefix: list[int], answers: list[list[int]], idx, pad: int):
    """input_ids, attention_mask, labels (-100 outside the answers) for rows `idx`."""
    import torch

    n = len(prefix) + max(len(answers[i]) for i in idx)
    ids = torch.full((len(idx), n), pad, dtype=torch.long)
    mask = torch.zeros((len(idx), n), dtype=torch.long)
    labels = torch.full((len(idx), n), -100, dtype=torch.long)
    for r, i in enumerate(idx):
        seq = prefix + answers[i]
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
        labels[r, len(prefix): len(seq)] = torch.tensor(answers[i])
    return ids, mask, labels


def train_sft(model_dir: str, out_dir: str, images: list[bytes], answers: list[str], *, steps: int,
              batch_size: int = 64, lr: float = 1e-3, warmup: float = 0.05, weight_decay: float = 0.01,
              betas: tuple[float, float] = (0.9, 0.98), seed: int = 0, log_every: int = 100, echo=print) -> dict:
    """Train and save; returns the summary also written to OUT/sft.json."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from benchmarks.world.model import vllm_layout

    t0 = time.time()
    torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    pixels = pixel_tensor(images, processor)
    prefix = prompt_ids(processor)
    ans = answer_ids(processor, answers)
    unk = processor.tokenizer.unk_token_id
    n_unk = sum(a.count(unk) for a in ans)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    warm = max(1, int(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    g = torch.Generator().manual_seed(seed)
    order, pos, curve, running = torch.randperm(len(ans), generator=g), 0, [], []
    pad = processor.tokenizer.pad_token_id
    for step in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(ans), generator=g), 0
        idx = order[pos: pos + batch_size].tolist()
        pos += batch_size
        ids, mask, labels = batch(prefix, ans, idx, pad)
        keep = ids.shape[1] - len(prefix) + 1  # logits only where an answer token is predicted (half the LM head)
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels[idx], logits_to_keep=keep).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, -keep + 1:].reshape(-1),
                               ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "loss": round(sum(running) / len(running), 4)})
            echo(f"sft step {step + 1}/{steps} loss {curve[-1]['loss']:.4f} ({time.time() - t0:.0f}s)")
            running = []
    model.eval()
    out = Path(out_dir)
    model.save_pretrained(str(out))
    vllm_layout(out)
    processor.save_pretrained(str(out))
    summary = {"model": model_dir, "rows": len(ans), "unk_tokens": n_unk, "steps": steps, "batch_size": batch_size,
               "lr": lr, "seed": seed, "curve": curve, "wall_s": round(time.time() - t0, 1)}
    (out / "sft.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder to start from")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--captions", help="COCO captions JSON (images relative to its folder)")
    src.add_argument("--pairs", help="a povid dataset: train on its pairs' chosen answers (the control)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    try:
        images, answers = read_captions(a.captions) if a.captions else read_chosen(a.pairs)
        summary = train_sft(a.model, a.output, images, answers, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                            warmup=a.warmup, seed=a.seed)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.items() if k != "curve"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
