"""The `povid eval` job: ask a VLM the CHAIR and POPE questions of a plan, score the answers, write the results.

    run = run_eval(EvalConfig(model="llava-hf/llava-1.5-7b-hf", coco_instances="instances_val2014.json",
                              coco_captions="captions_val2014.json", images="val2014", output="base.json"))
    run.results["chair"]["chair_s"], run.results["pope"]["adversarial"]["f1"]

Files (beside OUTPUT, e.g. results.json):
  results.json              the figures (schema in README "Evaluate"), written atomically at the end
  results.answers.jsonl     one line per answer: the question, the answer, what was read from it
  results.cache/answers.jsonl   the answer cache (povid_cli/eval/cache.py): a re-run resumes from it
  results.cache/openai/     --backend openai: the client's per-request response cache
The model is loaded only when some answer is missing from the cache, so re-scoring a finished run is
instant. Answers that fail (an unreadable image, a server error) are listed in the results with their
reason and asked again on the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from povid_cli.core.errors import PovidError, UsageError
from povid_cli.core.fs import resolve
from povid_cli.eval.annotations import pope_split_name, read_captions, read_instances, read_pope_file, read_subset
from povid_cli.eval.cache import AnswerCache, adapter_identity, answer_key, model_identity
from povid_cli.eval.config import BENCHMARKS, CHAIR_PROMPT, EvalConfig  # noqa: F401 - part of this module's API
from povid_cli.eval.chair_metrics import chair_metrics, ground_truth, score_answer
from povid_cli.eval.plan import make_plan
from povid_cli.eval.pope import parse_yes_no, pope_metrics

log = logging.getLogger("povid.eval")

FORMAT = 1  # results.json layout version
ADAPTER_MODES = {"transformers": "peft-merged", "vllm": "vllm-lora"}


@dataclass
class EvalRun:
    results: dict
    output: str
    answers: str
    html: str | None = None
    failures: list[dict] = field(default_factory=list)


def sibling(output: str, suffix: str) -> str:
    """results.json -> results<suffix> (results.answers.jsonl, results.cache)."""
    return str(output[: -len(".json")] if output.endswith(".json") else output) + suffix


def default_cache(output: str) -> str:
    """OUTPUT-stem.cache beside a local results file; a per-user folder when the results go to a URL
    (the cache is appended to answer by answer, which object stores cannot do)."""
    if "://" not in output:
        return sibling(output, ".cache")
    import os

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "povid", "eval")


def resolve_adapter(path: str) -> str:
    """A `povid train` output: OUT/final (or OUT itself, whose final/ is taken) holding adapter_config.json."""
    p = Path(path)
    if not p.is_dir():
        raise PovidError(f"--adapter {path}: no such folder")
    if not (p / "adapter_config.json").exists():
        if (p / "final" / "adapter_config.json").exists():
            return str(p / "final")
        if (p / "config.json").exists():
            raise PovidError(f"--adapter {path} is a whole model, not a LoRA adapter: pass it as --model")
        raise PovidError(f"--adapter {path} is not a LoRA adapter folder (no adapter_config.json); "
                         "give the final/ folder of a `povid train` run")
    return str(p)


def adapter_base(adapter: str) -> str:
    try:
        base = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise PovidError(f"cannot read {adapter}/adapter_config.json: {e}") from None
    if not base:
        raise UsageError(f"the adapter {adapter} does not name its base model; pass --model")
    return base


def check_config(cfg: EvalConfig) -> None:
    if not cfg.coco_instances and ("chair" in cfg.benchmarks or not cfg.pope_files):
        need = "CHAIR" if "chair" in cfg.benchmarks else "POPE without --pope-file"
        raise UsageError(f"{need} needs --coco-instances (e.g. annotations/instances_val2014.json)")
    if not cfg.images:
        raise UsageError("--images is required: the folder holding the annotated images (e.g. val2014/)")
    if cfg.backend == "openai" and cfg.adapter:
        raise UsageError("--adapter cannot be applied through --backend openai (the server answers with the model "
                         "it serves): serve the adapter there (`vllm serve BASE --enable-lora --lora-modules ...`) "
                         "and pass its name as --model, or use --backend vllm|transformers")
    if not cfg.model and not cfg.adapter:
        raise UsageError("--model is required (or --adapter, whose base model is then used)")


def _images_folder(path: str):
    loc = resolve(path)
    if not loc.is_dir():
        raise PovidError(f"--images {path}: no such folder")
    return loc


def _find_image(folder, file_name: str):
    for name in dict.fromkeys([file_name, file_name.replace("\\", "/").rsplit("/", 1)[-1]]):
        loc = folder.join(name)
        if loc.exists():
            return loc
    return None


@dataclass
class _Ask:
    """One distinct request: a prompt about one image, with the answer length it is allowed."""

    prompt: str
    file_name: str
    max_tokens: int
    key: str = ""
    error: str | None = None


def run_eval(cfg: EvalConfig, progress=None, echo: Callable[[str], None] = log.info) -> EvalRun:
    """Plan, answer (cache first, then the model), score and write; see the module docstring."""
    check_config(cfg)
    t0 = time.monotonic()
    adapter = resolve_adapter(cfg.adapter) if cfg.adapter else None
    model = cfg.model or adapter_base(adapter)
    folder = _images_folder(cfg.images)
    if cfg.coco_instances:
        echo(f"reading {cfg.coco_instances}")
    coco = read_instances(cfg.coco_instances) if cfg.coco_instances else None
    if coco is not None and cfg.coco_captions:
        coco.captions = read_captions(cfg.coco_captions)
    pope_lines: dict[str, list] = {}
    for path in cfg.pope_files if "pope" in cfg.benchmarks else ():
        name = pope_split_name(path)
        if name in pope_lines:
            raise UsageError(f"two --pope-file files hold the split '{name}'")
        pope_lines[name] = read_pope_file(path)
    names = dict(coco.file_names) if coco else {ln.image: ln.image for ls in pope_lines.values() for ln in ls}
    subsets = {name: read_subset(path, names) for name, path in cfg.subset_files()}
    plan = make_plan(coco, benchmarks=cfg.benchmarks, n_images=cfg.n_images, seed=cfg.seed,
                     splits=cfg.pope_splits, subsets=subsets, pope_lines=pope_lines)
    if not plan.chair_images and not plan.questions:
        raise PovidError("nothing to evaluate: no image with instances" + (" in the --subset files" if subsets else ""))

    # -- the distinct requests, and the cache ------------------------------------------------------
    asks: dict[tuple[str, str], _Ask] = {}
    for i in plan.chair_images:
        asks.setdefault((cfg.prompt, plan.file_names[i]), _Ask(cfg.prompt, plan.file_names[i], cfg.max_tokens))
    for q in plan.questions:
        asks.setdefault((q.text, q.file_name), _Ask(q.text, q.file_name, cfg.pope_max_tokens))
    backend_name = cfg.backend
    if backend_name == "auto":
        from povid_cli.backends.vlm import default_backend

        backend_name = default_backend()
    setting = {"model": model_identity(model), "adapter": adapter_identity(adapter), "backend": backend_name,
               "dtype": cfg.dtype if backend_name != "openai" else None, "temperature": 0.0}
    shas: dict[str, str | None] = {}
    for fname in dict.fromkeys(a.file_name for a in asks.values()):
        loc = _find_image(folder, fname)
        shas[fname] = hashlib.sha256(loc.read_bytes()).hexdigest() if loc else None
    missing = [f for f, s in shas.items() if s is None]
    if missing and len(missing) == len(shas):
        raise PovidError(f"none of the {len(shas)} images is in --images {cfg.images} (e.g. {missing[0]}): "
                         "is it the folder the annotation file's file_name entries are in?")
    for a in asks.values():
        if shas[a.file_name] is None:
            a.error = f"image not found: {a.file_name} is not in {cfg.images}"
        else:
            a.key = answer_key({**setting, "max_tokens": a.max_tokens}, a.prompt, shas[a.file_name])
    cache_dir = Path(cfg.cache or default_cache(cfg.output))
    cache = AnswerCache(cache_dir / "answers.jsonl")
    todo = [a for a in asks.values() if a.error is None and cache.get(a.key) is None]
    cached = sum(1 for a in asks.values() if a.error is None) - len(todo)
    echo(f"{len(asks)} answers to collect ({cached} cached) for {len(plan.images)} images")

    usage: dict[str, float] = {}
    adapter_mode = None
    try:
        if todo:
            usage, adapter_mode = _answer(cfg, backend_name, model, adapter, cache_dir, folder, todo, cache, progress)
    finally:
        cache.close()

    # -- scoring -------------------------------------------------------------------------------------
    rows, failures = _score(cfg, plan, coco, asks, cache)
    results = _results(cfg, plan, rows, subsets, model, adapter, backend_name, adapter_mode, asks, cache,
                       cached, usage, time.monotonic() - t0)
    results["failed"], results["failures"] = len(failures), failures
    answers_path = sibling(cfg.output, ".answers.jsonl")
    results["config"]["answers_file"] = _abs(answers_path)
    resolve(answers_path).write_bytes_atomic("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                                     for r in rows).encode())
    resolve(cfg.output).write_bytes_atomic(json.dumps(results, indent=2, default=str).encode())
    if cfg.html:
        from povid_cli.eval.html import write_page

        write_page(cfg.html, results, rows, folder)
    return EvalRun(results, cfg.output, answers_path, cfg.html, failures)


def _answer(cfg: EvalConfig, backend_name: str, model: str, adapter: str | None, cache_dir: Path, folder,
            todo: list[_Ask], cache: AnswerCache, progress) -> tuple[dict, str | None]:
    """Run the model on the requests missing from the cache; each answer goes to the cache as it comes."""
    from povid_cli.backends.vlm import Sampling, VLMOutput, VLMRequest, load_backend

    kw: dict[str, Any] = dict(model=model, sampling=Sampling(n=1, temperature=0.0, max_tokens=cfg.max_tokens, seed=cfg.seed),
                              dtype=cfg.dtype, batch_size=cfg.batch_size, tensor_parallel=cfg.tensor_parallel,
                              max_model_len=cfg.max_model_len, adapter=adapter)
    if backend_name == "openai":
        kw["api"] = cfg.api if cfg.api.cache_dir else replace(cfg.api, cache_dir=str(cache_dir / "openai"))
    backend = load_backend(backend_name, **kw)
    chunk = {"transformers": getattr(backend, "batch_size", 8), "vllm": 256}.get(backend_name, max(64, 4 * cfg.api.concurrency))
    task = progress.add_task("eval", total=len(todo)) if progress is not None else None
    usage: dict[str, float] = {}
    try:
        for max_tokens in sorted({a.max_tokens for a in todo}):
            # the backends read their sampling settings at each generate call
            backend.sampling = replace(backend.sampling, max_tokens=max_tokens)
            group = [a for a in todo if a.max_tokens == max_tokens]
            for k in range(0, len(group), chunk):
                part = group[k : k + chunk]
                reqs = [VLMRequest(a.prompt, _find_image(folder, a.file_name).read_bytes()) for a in part]
                outs = backend.generate(reqs)
                for key, v in (getattr(backend, "usage", None) or {}).items():
                    usage[key] = usage.get(key, 0) + v
                for a, o in zip(part, outs):
                    if isinstance(o, VLMOutput):
                        u = o.usage or {}
                        cache.put(a.key, {"text": o.texts[0], "finish_reason": o.finish_reasons[0],
                                          "completion_tokens": o.generated_tokens,
                                          "prompt_tokens": int(u.get("prompt_tokens", 0))})
                    else:
                        a.error = " ".join(str(o).split()) or type(o).__name__
                if task is not None:
                    progress.advance(task, len(part))
    finally:
        backend.close()
    return usage, getattr(backend, "adapter_mode", None)


def _score(cfg: EvalConfig, plan, coco, asks: dict, cache: AnswerCache) -> tuple[list[dict], list[dict]]:
    """One row per CHAIR image and per POPE question (answered or failed) -> (rows, failures)."""
    rows, failures = [], []
    for i in plan.chair_images:
        a = asks[(cfg.prompt, plan.file_names[i])]
        base = {"benchmark": "chair", "image_id": i, "file_name": a.file_name, "prompt": a.prompt}
        rec = cache.get(a.key) if a.key else None
        if rec is None:
            failures.append({**base, "error": a.error or "no answer"})
            rows.append({**base, "error": a.error or "no answer"})
            continue
        truth = ground_truth(coco.objects.get(i), coco.captions.get(i))
        s = score_answer(rec["text"], truth)
        rows.append({**base, "answer": rec["text"], "finish_reason": rec.get("finish_reason"), "truth": sorted(truth), **s})
    for q in plan.questions:
        a = asks[(q.text, q.file_name)]
        base = {"benchmark": "pope", "split": q.split, "question_id": q.question_id, "image_id": q.image_id,
                "file_name": q.file_name, "prompt": q.text, "object": q.object, "label": q.label}
        rec = cache.get(a.key) if a.key else None
        if rec is None:
            failures.append({**base, "error": a.error or "no answer"})
            rows.append({**base, "error": a.error or "no answer"})
            continue
        pred, parsed = parse_yes_no(rec["text"])
        rows.append({**base, "answer": rec["text"], "pred": pred, "parsed": parsed})
    return rows, failures


def _figures(rows: list[dict], chair_ids: set | None, pope_ids: set | None, splits) -> dict:
    ok = [r for r in rows if "error" not in r]
    out: dict[str, Any] = {}
    if chair_ids is not None:
        out["chair"] = chair_metrics([r for r in ok if r["benchmark"] == "chair" and r["image_id"] in chair_ids])
    if pope_ids is not None:
        out["pope"] = {s: pope_metrics((r["label"], r["pred"], r["parsed"]) for r in ok
                                       if r["benchmark"] == "pope" and r["split"] == s and r["image_id"] in pope_ids)
                       for s in splits}
    return out


def _abs(path: str | None) -> str | None:
    """Local paths made absolute (results compared later name the same files the same way); URLs as given."""
    return path if path is None or "://" in path else str(Path(path).resolve())


def _results(cfg, plan, rows, subsets, model, adapter, backend_name, adapter_mode, asks, cache, cached, usage,
             seconds) -> dict:
    splits = list(dict.fromkeys(q.split for q in plan.questions))
    has_chair, has_pope = "chair" in cfg.benchmarks and plan.chair_images, "pope" in cfg.benchmarks
    res: dict[str, Any] = {"povid_eval": FORMAT, "model": model, "adapter": adapter, "backend": backend_name,
                           "n_images": len(plan.images)}
    res.update(_figures(rows, set(plan.chair_images) if has_chair else None,
                        {q.image_id for q in plan.questions} if has_pope else None, splits))
    if subsets:
        res["subsets"] = {}
        for name, got in plan.subset_images.items():
            ids = set(got.get("chair", [])) | set(got.get("pope", []))
            res["subsets"][name] = {"n_images": len(ids), **_figures(
                rows, set(got["chair"]) if has_chair and "chair" in got else None,
                set(got["pope"]) if has_pope and "pope" in got else None, splits)}
    recs = [cache.get(a.key) for a in asks.values() if a.key and cache.get(a.key)]
    cached += int(usage.get("cached", 0))  # answers the openai client's own cache held (a run killed mid-chunk)
    res["usage"] = {"answers": len(recs), "cached": cached, "generated": len(recs) - cached,
                    "prompt_tokens": sum(r.get("prompt_tokens", 0) for r in recs),
                    "completion_tokens": sum(r.get("completion_tokens", 0) for r in recs),
                    "cost_usd": round(float(usage.get("cost_usd", 0.0)), 6), "seconds": round(seconds, 2)}
    from povid_cli import __version__

    res["config"] = {
        "benchmarks": list(cfg.benchmarks), "n_images": cfg.n_images, "seed": cfg.seed, "prompt": cfg.prompt,
        "max_tokens": cfg.max_tokens, "pope_max_tokens": cfg.pope_max_tokens, "decoding": "greedy",
        "pope_splits": splits, "pope_files": [_abs(p) for p in cfg.pope_files], "pope_question": "generated" if not cfg.pope_files else "file",
        "coco_instances": _abs(cfg.coco_instances), "coco_captions": _abs(cfg.coco_captions),
        "images": _abs(cfg.images), "subsets": {name: _abs(path) for name, path in cfg.subset_files()},
        "dtype": cfg.dtype, "api_base": cfg.api.api_base,
        # how the adapter was applied: folded into the weights (transformers) or served by vLLM's LoRA support
        "adapter_mode": (adapter_mode or ADAPTER_MODES.get(backend_name)) if adapter else None,
        "chair_i": "hallucinated mentions / all mentions (repeats counted)", "povid_version": __version__,
    }
    return res


__all__ = ["EvalConfig", "EvalRun", "run_eval"]
