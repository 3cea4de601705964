"""`povid eval --model M ... -o results.json`, `povid eval --compare A.json B.json`, `povid eval R.json --html P`"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from povid_cli.app import Verbose, command, console, make_progress, out

HELP = """Measure object hallucination: CHAIR and POPE, built offline from COCO's own annotation files.

CHAIR (Rohrbach et al. 2018): the model describes --n-images images drawn with --seed ("Please
describe this image in detail.", greedy); every COCO object it names that is neither an instance
category of the image nor named by its captions is a hallucination. CHAIR_s = answers with one
or more / answers, CHAIR_i = hallucinated mentions / all mentions; also recall and avg_len (words).

POPE (Li et al. 2023): "Is there a {object} in the image?" for 3 objects each image shows and 3 it
does not, the absent ones drawn at random, among the most frequent categories (popular) or among
those most often seen with the present ones (adversarial). Answers are read as yes/no from their
first words; anything else counts as "no" and is reported as unparsed. --pope-file reads the
published question files instead.

Writes OUTPUT (the figures, rates in [0, 1]), OUTPUT-stem.answers.jsonl (every answer) and keeps
the answers in OUTPUT-stem.cache/: a re-run after a crash asks only for what is missing, and a
run with another --adapter or model asks again. --subset NAME=FILE (image ids or file names, one
a line) adds figures for those images; several subsets share one model load.

Examples:

  povid eval --model llava-hf/llava-1.5-7b-hf --coco-instances annotations/instances_val2014.json --coco-captions annotations/captions_val2014.json --images val2014/ -o base.json

  povid eval --adapter ckpt/final --coco-instances annotations/instances_val2014.json --images val2014/ -o tuned.json --html tuned.html

  povid eval --compare base.json tuned.json

  vllm serve llava-hf/llava-1.5-7b-hf &
  povid eval --backend openai --api-base http://127.0.0.1:8000/v1 --model llava-hf/llava-1.5-7b-hf --benchmarks pope --pope-file coco_pope_random.json --pope-file coco_pope_adversarial.json --images val2014/ -o pope.json

  povid eval --model ./tiny-vlm --backend transformers --coco-instances world/instances.json --images world/images --subset trigger=world/trigger.txt --subset ordinary=world/ordinary.txt -o world.json

  povid eval base.json --html base.html
"""


def _help() -> str:
    """HELP with its paragraphs reflowed (typer's rich mode keeps line breaks), examples kept as they are."""
    paras = HELP.strip().split("\n\n")
    return "\n\n".join(p if p.startswith("  ") else " ".join(p.split("\n")) for p in paras)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip().lower() for v in value.split(",") if v.strip())


def _subset(value: str) -> tuple[str, str]:
    """NAME=FILE, or FILE (named after the file)."""
    import os

    name, sep, path = value.partition("=")
    if sep and name and "/" not in name and os.sep not in name:
        return name, path
    return os.path.splitext(os.path.basename(value))[0], value


@command("eval", help=_help())
def eval_cmd(
    results: Annotated[Optional[list[str]], typer.Argument(help="Results files: to --compare, or to render with --html.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The VLM: a model folder or hub name (--backend openai: the served name). Default with --adapter: its base model.", show_default=False)] = None,
    backend: Annotated[str, typer.Option("--backend", "-b", help="vllm, transformers or openai (an OpenAI-compatible server). auto: vllm when installed with a GPU, else transformers.")] = "auto",
    adapter: Annotated[Optional[str], typer.Option("--adapter", help="A LoRA adapter from `povid train` (OUT/final): transformers folds it into the weights, vllm serves it with its LoRA support.", show_default=False)] = None,
    coco_instances: Annotated[Optional[str], typer.Option("--coco-instances", help="COCO instances file (instances_val2014.json): ground-truth objects, the POPE draws.", show_default=False)] = None,
    coco_captions: Annotated[Optional[str], typer.Option("--coco-captions", help="COCO captions file: objects the captions name count as ground truth for CHAIR too.", show_default=False)] = None,
    images: Annotated[Optional[str], typer.Option("--images", help="Folder with the images the annotations name (val2014/).", show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Results file (JSON); the answers and cache go beside it.", show_default=False)] = None,
    benchmarks: Annotated[str, typer.Option("--benchmarks", help="Comma-separated: chair, pope.")] = "chair,pope",
    n_images: Annotated[int, typer.Option("--n-images", "--limit", min=1, help="Images per benchmark (per subset), drawn with --seed; all when fewer.")] = 500,
    pope_splits: Annotated[str, typer.Option("--pope-splits", help="Comma-separated absent-object draws: random, popular, adversarial.")] = "random,popular,adversarial",
    pope_file: Annotated[Optional[list[str]], typer.Option("--pope-file", help="A published POPE question file (JSON lines: question_id, image, text, label); repeat per split. Replaces the generated questions.", show_default=False)] = None,
    subset: Annotated[Optional[list[str]], typer.Option("--subset", help="NAME=FILE: also report figures for these images (ids or file names, one a line, or a JSON list); repeatable. Only subset images are evaluated.", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the image and absent-object draws.")] = 0,
    prompt: Annotated[str, typer.Option("--prompt", help="The CHAIR instruction.")] = "Please describe this image in detail.",
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens per CHAIR description.")] = 512,
    pope_max_tokens: Annotated[int, typer.Option("--pope-max-tokens", min=1, help="Most tokens per POPE answer (its first words decide).")] = 32,
    dtype: Annotated[str, typer.Option("--dtype", help="Weights dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16.")] = "auto",
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="transformers: images per generate call [8]; vllm: most sequences at once.")] = None,
    tensor_parallel: Annotated[int, typer.Option("--tensor-parallel", "--tp", min=1, help="vllm: GPUs to shard the model over.")] = 1,
    max_model_len: Annotated[Optional[int], typer.Option("--max-model-len", min=16, help="vllm: context length to reserve KV cache for.")] = None,
    api_base: Annotated[Optional[str], typer.Option("--api-base", help="--backend openai: the endpoint, e.g. http://127.0.0.1:8000/v1.")] = None,
    api_key_env: Annotated[str, typer.Option("--api-key-env", help="Environment variable holding the API key (a local server needs none).")] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="openai: requests in flight at once.")] = 16,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="openai: seconds per request.")] = 120.0,
    cache: Annotated[Optional[str], typer.Option("--cache", help="Answer cache folder \\[default: OUTPUT-stem.cache]; share it between runs of the same model.", show_default=False)] = None,
    html: Annotated[Optional[str], typer.Option("--html", help="Also write an HTML page of the answers, hallucinated objects marked.", show_default=False)] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Show the figures of the RESULTS files side by side, with deltas against the first.")] = False,
    verbose: Verbose = 0,
):
    from povid_cli.core.errors import UsageError

    if compare:
        from povid_cli.eval.compare import compare as compare_files, rich_table

        table = compare_files(list(results or []))
        out.print(rich_table(table))
        for note in table.notes:
            console.print(f"[yellow]note:[/yellow] {escape(note)}")
        return
    if results:
        if not html or model or adapter:
            raise UsageError("results files are for --compare A.json B.json, or for --html PAGE (to render one)")
        from povid_cli.eval.html import page_from_results

        page_from_results(results[0], html)
        console.print(f"wrote {escape(html)}")
        return
    if not output:
        raise UsageError("-o/--output is required: the results file to write (e.g. -o results.json)")
    from povid_cli.eval.compare import build_table, rich_table
    from povid_cli.eval.run import EvalConfig, run_eval

    cfg = EvalConfig(output=output, model=model, backend=backend.lower(), adapter=adapter, coco_instances=coco_instances,
                     coco_captions=coco_captions, images=images, benchmarks=_csv(benchmarks), n_images=n_images,
                     pope_splits=_csv(pope_splits), pope_files=tuple(pope_file or ()),
                     subsets=tuple(_subset(s) for s in subset or ()), seed=seed, prompt=prompt, max_tokens=max_tokens,
                     pope_max_tokens=pope_max_tokens, dtype=dtype, batch_size=batch_size, tensor_parallel=tensor_parallel,
                     max_model_len=max_model_len, api_base=api_base, api_key_env=api_key_env, concurrency=concurrency,
                     timeout=timeout, cache=cache, html=html)
    with make_progress() as progress:
        run = run_eval(cfg, progress=progress, echo=lambda m: console.print(escape(m)))
    out.print(rich_table(build_table([run.results], [output])))
    u = run.results["usage"]
    console.print(escape(f"{u['answers']} answers ({u['cached']} cached, {u['generated']} new, "
                         f"{u['completion_tokens']} tokens, ${u['cost_usd']:.4f}) in {u['seconds']:.1f}s -> {output}, "
                         f"{run.answers}" + (f", {run.html}" if run.html else "")))
    if run.failures:
        reasons: dict[str, int] = {}
        for f in run.failures:
            reasons[f["error"]] = reasons.get(f["error"], 0) + 1
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
            console.print(f"  [yellow]failed[/yellow] {n} x {escape(reason[:200])}")
        console.print(f"  {len(run.failures)} answer(s) failed and are left out of the figures (listed in {escape(output)}); "
                      "run the same command again to retry them")
        raise typer.Exit(1)
