"""`transformers` VLM backend: AutoModelForImageTextToText + AutoProcessor, batched `generate`.

The CPU fallback and the reference the vLLM backend is checked against (greedy decoding gives the
same tokens). Prompts go through the model's own chat template; the batch is left-padded.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from povid_cli.core.errors import PovidError, RowError, require
from povid_cli.backends.families import chat_prompt, detect_family
from povid_cli.backends.vlm import Sampling, VLMOutput, VLMRequest, decode_request_images

log = logging.getLogger("povid.sample.transformers")


def torch_dtype(torch, name: str, device: str):
    if name in (None, "", "auto"):
        # bf16 matmuls are slow on most CPUs; on GPU bf16 is what VLM checkpoints are trained in.
        return torch.bfloat16 if device == "cuda" else torch.float32
    aliases = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    dt = getattr(torch, aliases.get(name, name), None)
    if not isinstance(dt, torch.dtype):
        raise PovidError(f"unknown dtype '{name}'; use auto, float32, bfloat16 or float16")
    return dt


class TransformersBackend:
    local = True
    whole_shards = False  # fixed batches of `batch_size` items per generate call
    can_score = True
    name = "transformers"

    def __init__(self, model: str, sampling: Sampling, *, dtype: str = "auto", batch_size: int | None = 8,
                 device: str | None = None, adapter: str | None = None, **_: Any):
        self.model_name = model
        self.sampling = sampling
        self.batch_size = batch_size or 8
        self.family = detect_family(model)
        torch = self.torch = require("torch", "train")
        transformers = require("transformers", "train")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if not log.isEnabledFor(logging.INFO):
            transformers.utils.logging.disable_progress_bar()  # povid shows its own progress; -v brings these back
        self.processor = transformers.AutoProcessor.from_pretrained(model)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"  # generation continues from the right edge of every row
        self.model = transformers.AutoModelForImageTextToText.from_pretrained(
            model, dtype=torch_dtype(torch, dtype, self.device)).to(self.device).eval()
        self.adapter_mode = None
        if adapter:  # a LoRA adapter (`povid train` OUT/final): folded in once, so generation runs at base speed
            peft = require("peft", "train")
            self.model = peft.PeftModel.from_pretrained(self.model, adapter).merge_and_unload().eval()
            self.adapter_mode = "peft-merged"
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        # Placeholder ids the processor expands into image features: an answer that happens to contain
        # one cannot be teacher-forced as is (the model would look for image features there).
        cfg = self.model.config
        self.placeholder_ids = {getattr(cfg, a, None) for a in ("image_token_id", "image_token_index", "video_token_id")} - {None}

    # -- generation -------------------------------------------------------------------------------------
    def _inputs(self, prompts: list[str], images: list[list]) -> dict:
        """images: each prompt's list of PIL images (several for a multi-image item)."""
        texts = [chat_prompt(self.processor, p, len(ims)) for p, ims in zip(prompts, images)]
        enc = self.processor(text=texts, images=[list(ims) for ims in images], padding=True, return_tensors="pt")
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in enc.items()}

    def _trim(self, ids: list[int]) -> list[int]:
        """Generated ids up to and including the first end-of-turn token (the rest is padding)."""
        for i, t in enumerate(ids):
            if t in self.eos_ids:
                return ids[: i + 1]
        return ids

    def _generate_chunk(self, reqs: list[VLMRequest], images: list) -> list[VLMOutput]:
        torch, s = self.torch, self.sampling
        inputs = self._inputs([r.prompt for r in reqs], images)
        width = inputs["input_ids"].shape[1]
        reps = 1 if s.greedy else s.n  # greedy: all n answers are the same; generate once
        kw: dict[str, Any] = {"max_new_tokens": s.max_tokens, "pad_token_id": self.pad_id,
                              "eos_token_id": sorted(self.eos_ids), "num_return_sequences": reps}
        if s.greedy:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=None)
            if s.seed is not None:
                torch.manual_seed(s.seed)
        with torch.inference_mode():
            seqs = self.model.generate(**inputs, **kw)
        gen = seqs[:, width:].tolist()
        outs = []
        for i in range(len(reqs)):
            ids = [self._trim(g) for g in gen[i * reps : (i + 1) * reps]] * (s.n if s.greedy else 1)
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            reasons = ["stop" if x and x[-1] in self.eos_ids else "length" for x in ids]
            outs.append(VLMOutput([t.strip() for t in texts], reasons, [list(x) for x in ids]))
        return outs

    def generate(self, requests: list[VLMRequest]) -> list[VLMOutput | RowError]:
        images = decode_request_images(requests)
        results: list[VLMOutput | RowError | None] = [im if isinstance(im, RowError) else None for im in images]
        ok = [i for i, im in enumerate(images) if not isinstance(im, RowError)]
        for k in range(0, len(ok), self.batch_size):
            idx = ok[k : k + self.batch_size]
            try:
                outs = self._generate_chunk([requests[i] for i in idx], [images[i] for i in idx])
            except (ValueError, RuntimeError) as e:
                if len(idx) == 1 or "out of memory" in str(e).lower():
                    for i in idx:
                        results[i] = RowError(f"generation failed: {type(e).__name__}: {str(e)[:300]}", kind="generation")
                    continue
                # one bad row (e.g. a prompt longer than the model takes) must not fail its neighbours
                outs = []
                for i in idx:
                    try:
                        outs.extend(self._generate_chunk([requests[i]], [images[i]]))
                    except (ValueError, RuntimeError) as e1:
                        outs.append(RowError(f"generation failed: {type(e1).__name__}: {str(e1)[:300]}", kind="generation"))
            for i, o in zip(idx, outs):
                results[i] = o
        return results  # type: ignore[return-value]

    # -- scoring ------------------------------------------------------------------------------------------
    def score(self, requests: list[VLMRequest], outputs: list[VLMOutput]) -> list[list[float] | RowError]:
        """Mean token log-prob of each generated answer, teacher-forced after (requests[i].image, prompt).

        The answer's own generated ids are scored (end-of-turn token included when it stopped), so no
        re-tokenisation can shift them.
        """
        images = decode_request_images(requests)
        out: list[list[float] | RowError] = []
        for req, im, o in zip(requests, images, outputs):
            if isinstance(im, RowError):
                out.append(im)
                continue
            try:
                out.append(self._score_one(req, im, o))
            except (ValueError, RuntimeError) as e:
                out.append(RowError(f"scoring failed: {type(e).__name__}: {str(e)[:300]}", kind="generation"))
        return out

    def _score_one(self, req: VLMRequest, images: list, o: VLMOutput) -> list[float]:
        torch = self.torch
        ids = [x if x else [self.pad_id] for x in o.token_ids]  # an empty answer: nothing was said (score the pad)
        if not o.token_ids or len(ids) != len(o.texts):
            raise RowError("no token ids to score", kind="generation")
        n, width = len(ids), max(len(x) for x in ids)
        inputs = self._inputs([req.prompt] * n, [images] * n)
        p_len = inputs["input_ids"].shape[1]
        resp = torch.full((n, width), self.pad_id, dtype=inputs["input_ids"].dtype, device=self.device)
        mask = torch.zeros((n, width), dtype=inputs["attention_mask"].dtype, device=self.device)
        for j, x in enumerate(ids):
            resp[j, : len(x)] = torch.tensor([self.pad_id if t in self.placeholder_ids else t for t in x])
            mask[j, : len(x)] = torch.tensor([t not in self.placeholder_ids for t in x])
        inputs["input_ids"] = torch.cat([inputs["input_ids"], resp], 1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], mask], 1)
        for k in [k for k in inputs if k.endswith("token_type_ids")]:  # Qwen2-VL: 0 = text for the answer
            inputs[k] = torch.cat([inputs[k], torch.zeros_like(resp, dtype=inputs[k].dtype)], 1)
        with torch.inference_mode():
            try:
                logits = self.model(**inputs, logits_to_keep=width + 1).logits[:, :width]
            except TypeError:  # an older model class without logits_to_keep
                logits = self.model(**inputs).logits[:, p_len - 1 : p_len - 1 + width]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
        means = ((logp * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()
        return [float(m) if math.isfinite(m) else float("-inf") for m in means]

    def close(self) -> None:
        self.model = None
