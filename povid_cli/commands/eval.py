"""`povid eval --model M ... -o results.json`, `povid eval --compare A.json B.json`, `povid eval R.json --html P`
(options: povid_cli/eval/config.py, EvalConfig)"""

from __future__ import annotations

import inspect
from typing import Annotated, Optional

import typer
from rich.markup import escape

from povid_cli.app import Verbose, command, console, make_progress, out, reflow
from povid_cli.core import options
from povid_cli.eval.config import EvalConfig

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


def eval_cmd(results: list[str] | None = None, output: str | None = None, compare: bool = False, verbose: int = 0,
             **kw):
    from povid_cli.core.errors import UsageError

    if compare:
        from povid_cli.eval.compare import compare as compare_files, rich_table

        table = compare_files(list(results or []))
        out.print(rich_table(table))
        for note in table.notes:
            console.print(f"[yellow]note:[/yellow] {escape(note)}")
        return
    html, model, adapter = kw.get("html"), kw.get("model"), kw.get("adapter")
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
    from povid_cli.eval.run import run_eval

    cfg = options.from_flags(EvalConfig, kw, output=output)
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


_P = inspect.Parameter
PARAMS = [
    _P("results", _P.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[Optional[list[str]], typer.Argument(
        help="Results files: to --compare, or to render with --html.", metavar="[RESULTS]...", show_default=False)]),
    _P("output", _P.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[str], typer.Option(
        "--output", "-o", help="Results file (JSON); the answers and cache go beside it.", show_default=False)]),
    *options.typer_parameters(EvalConfig),
    _P("compare", _P.KEYWORD_ONLY, default=False, annotation=Annotated[bool, typer.Option(
        "--compare", help="Show the figures of the RESULTS files side by side, with deltas against the first.")]),
    _P("verbose", _P.KEYWORD_ONLY, default=0, annotation=Verbose),
]
command("eval", help=reflow(HELP))(options.signature_command(eval_cmd, PARAMS))
