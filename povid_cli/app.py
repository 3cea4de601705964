"""The typer app, its one error boundary, and what every command shares (options, progress, running a stage).

Command modules in povid_cli/commands/ decorate their functions with `@command(...)`; importing them
must stay cheap (no torch, vllm or transformers at import time), so `povid --help` is instant.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import traceback
from typing import Annotated, Callable

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.markup import escape

from povid_cli.core.errors import Interrupted, PovidError
from povid_cli.core.options import annotated
from povid_cli.core.executors import RunOptions

_interrupt_reported = False


class _OneLineErrors(TyperGroup):
    """click's usage errors (a bad flag value, a missing argument) as one red line and exit 2, like every
    other povid error, instead of rich's five-line box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            error("aborted")
            sys.exit(1)
        except typer.TyperException as e:  # click's errors (its exceptions derive from this one)
            ctx = getattr(e, "ctx", None)
            if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:  # `povid` alone: the help
                typer.echo(ctx.get_help())
                sys.exit(0)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            error(" ".join(e.format_message().split()) + where)
            sys.exit(getattr(e, "exit_code", 2))
        if rv == 130 and not _interrupt_reported:  # typer turned an interrupt outside a command into a bare 130
            error(Interrupted().message)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="povid",
    help=(
        "Hallucination-aware preference data for vision-language models (POVID), and DPO training on it.\n\n"
        "Typical run:  povid synth IMAGES/ -o DATA  (ingest -> hallucinate -> distort -> filter -> export),\n"
        "then  povid train DATA --model M -o CKPT.  Every stage resumes where it stopped."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)  # results meant for stdout (tables, paths)
log = logging.getLogger("povid")

# -- shared options ------------------------------------------------------------------------------------
Verbose = Annotated[int, typer.Option("-v", "--verbose", count=True, help="Log what happens (-vv: debug).")]
# The run flags, declared once on RunOptions (core/runner.py), for the commands that list their own options.
Executor = annotated(RunOptions, "executor")
Limit = annotated(RunOptions, "limit")
Workers = annotated(RunOptions, "workers")
RayAddress = annotated(RunOptions, "ray_address")
RetryFailed = annotated(RunOptions, "retry_failed")


RUN_FLAGS = ("workers", "limit", "executor", "ray_address", "retry_failed")


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    # The http libraries are chatty at INFO; they would also print request URLs with keys in query strings.
    for noisy in ("httpx", "httpcore", "openai", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 3 else logging.DEBUG)


def error(message: str) -> None:
    console.print(f"[bold red]error:[/bold red] {escape(message)}")


def _on_sigterm(signum, frame):  # pragma: no cover - exercised by the synth kill tests
    raise Interrupted("stopped by SIGTERM; finished shards are kept, run the same command again to resume")


def command(*args, **kwargs) -> Callable:
    """`app.command` plus the error boundary: domain errors become one red line and an exit code."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            verbose = kw.get("verbose", 0) or 0
            setup_logging(verbose)
            if hasattr(signal, "SIGTERM"):
                try:
                    signal.signal(signal.SIGTERM, _on_sigterm)
                except ValueError:  # not the main thread (e.g. inside a test runner thread)
                    pass
            try:
                return fn(*a, **kw)
            except typer.Exit:
                raise
            except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Interrupted): never a row failure
                global _interrupt_reported
                _interrupt_reported = True
                error(e.message if isinstance(e, Interrupted) else Interrupted().message)
                raise typer.Exit(130) from None
            except PovidError as e:
                error(str(e))
                raise typer.Exit(e.exit_code) from None
            except Exception as e:  # noqa: BLE001 - a bug: still one line unless -v asks for more
                if verbose:
                    traceback.print_exc()
                error(f"unexpected {type(e).__name__}: {e}" + ("" if verbose else " (run with -v for the traceback)"))
                raise typer.Exit(1) from None

        return app.command(*args, **kwargs)(wrapper)

    return decorate


def reflow(text: str) -> str:
    """A help text with its paragraphs joined into lines (typer's rich mode keeps line breaks); indented
    paragraphs (examples) stay as they are."""
    paras = text.strip().split("\n\n")
    return "\n\n".join(p if p.startswith("  ") else " ".join(p.split("\n")) for p in paras)


def make_progress():
    """A rich progress display on stderr (silent when stderr is not a terminal, e.g. in cron logs)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("rows"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False, disable=not console.is_terminal or bool(os.environ.get("POVID_NO_PROGRESS")),
    )


def execute_stage(data: str, stage, run=None):
    """Run one stage over DATA with a progress bar, print a summary; exit 1 if rows failed."""
    from povid_cli.core.executors import RunOptions
    from povid_cli.synth.single import run_single

    with make_progress() as progress:
        ds, result = run_single(data, stage, run or RunOptions(), progress)
    report_run(ds, result)
    return result


def stage_command(name: str, stage_cls, *, help: str, run_flags: tuple[str, ...] = RUN_FLAGS,
                  extra: list | None = None, after: Callable | None = None) -> None:
    """Register `povid NAME DATA [options]`: every option of the stage's config (declared once, on its
    dataclass) plus the run flags; builds the config, runs the stage, prints the summary. `extra`:
    more typer parameters (eager ones like --list-methods); `after(data, stage, run)`: what to print next."""
    import inspect

    from povid_cli.core import options
    from povid_cli.core.executors import RunOptions
    from povid_cli.synth.single import check_inputs, with_response_cache

    data = inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[str, typer.Argument(
        help="The dataset folder (local path or URL).", metavar="DATA", show_default=False)])
    run_params = [p for p in options.typer_parameters(RunOptions) if p.name in run_flags]
    verbose = inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=0, annotation=Verbose)
    params = [data] + options.typer_parameters(stage_cls.Config) + (extra or []) + run_params + [verbose]

    def run(data: str, verbose: int = 0, **kw):
        run_opts = options.from_flags(RunOptions, {k: v for k, v in kw.items() if k in run_flags})
        config = options.from_flags(stage_cls.Config, kw)
        check_inputs(data, stage_cls, config)  # DATA first: "run distort first" before "no such model"
        stage = with_response_cache(stage_cls(config), data)
        try:
            result = execute_stage(data, stage, run_opts)
        finally:
            stage.close()
        if after is not None:
            after(data, stage, result)

    run.__name__ = f"{name}_cmd"
    command(name, help=help)(options.signature_command(run, params))


def report_run(ds, run) -> None:
    from povid_cli.core.runner import summarize_failures

    console.print(escape(run.line()))
    if run.failed:
        for line in summarize_failures(ds, run.stage):
            console.print(f"  [yellow]failed[/yellow] {escape(line)}")
        console.print(f"  {run.failed} row(s) failed: see {ds.root.url}/failed/{run.stage}/ "
                      f"(`povid status {ds.root.url}`); re-run to retry transient failures")
        raise typer.Exit(1)


def _version(value: bool) -> None:
    if value:
        from povid_cli import __version__

        out.print(f"povid {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """Hallucination-aware preference data for VLMs (POVID), and DPO training on it."""
