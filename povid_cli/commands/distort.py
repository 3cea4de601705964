"""`povid distort DATA [--method NAME[:k=v,...]]...` (options: stages/distort.py, DistortConfig)"""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

from povid_cli.app import out, reflow, stage_command
from stages.distort import DistortStage


HELP = """Distort each item's image into DATA/distorted (POVID's diffusion noise by default).

The distorted image is what `povid sample` shows the target VLM, so that its answer comes from its
language prior: its own, on-policy hallucinations. `diffusion` is POVID's forward-diffusion noise,
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at step t of a 1000-step sigmoid schedule, added to the
CLIP-normalised image at the model's input size (--size). Other methods (albumentations) give other
triggers; local-noise noises only inside the item's object boxes (MMedPO). Each --method gives one
variant (row) per item; a multi-image item's images are all distorted (or only --image-index N).

The output is deterministic: the same image, method, parameters and seed give the same bytes
whatever the number of workers. Images that cannot be decoded go to DATA/failed/distort.

Examples:

  povid distort data

  povid distort data --method diffusion:t=700 --method blur:sigma=6 --method mix

  povid distort data -m local-noise:pad=0.2 --size 0

  povid distort data --list-methods
"""


def _help() -> str:
    """HELP with its paragraphs reflowed (typer's rich mode keeps line breaks) and the method catalogue."""
    from stages.distortions import describe_methods

    return reflow(HELP) + "\n\nMethods (NAME: parameter=default):\n\n" + describe_methods()


def _list_methods(value: bool) -> None:
    if value:
        from stages.distortions import describe_methods

        out.print(describe_methods(), markup=False)
        raise typer.Exit()


LIST_METHODS = inspect.Parameter(
    "list_methods", inspect.Parameter.KEYWORD_ONLY, default=False,
    annotation=Annotated[bool, typer.Option("--list-methods", callback=_list_methods, is_eager=True,
                                            help="List the methods and their parameters, and exit.")])

stage_command("distort", DistortStage, help=_help(), extra=[LIST_METHODS])
