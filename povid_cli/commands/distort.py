"""`povid distort DATA [--method NAME[:k=v,...]]...`"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from povid_cli.app import Executor, Limit, RayAddress, RetryFailed, Verbose, Workers, command, execute_stage, out


HELP = """Distort each item's image into DATA/distorted (POVID's diffusion noise by default).

The distorted image is what `povid sample` shows the target VLM, so that its answer comes from its
language prior: its own, on-policy hallucinations. `diffusion` is POVID's forward-diffusion noise,
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at step t of a 1000-step sigmoid schedule, added to the
CLIP-normalised image at the model's input size (--size). Other methods (albumentations) give other
triggers; each --method gives one variant (row) per item.

The output is deterministic: the same image, method, parameters and seed give the same bytes
whatever the number of workers. Images that cannot be decoded go to DATA/failed/distort.

Examples:

  povid distort data

  povid distort data --method diffusion:t=700 --method blur:sigma=6 --method mix

  povid distort data --list-methods
"""


def _help() -> str:
    """HELP with its paragraphs reflowed (typer's rich mode keeps line breaks) and the method catalogue."""
    from stages.distortions import describe_methods

    paras = [" ".join(p.split("\n")) if not p.startswith("  ") else p for p in HELP.strip().split("\n\n")]
    return "\n\n".join(paras) + "\n\nMethods (NAME: parameter=default):\n\n" + describe_methods()


def _list_methods(value: bool) -> None:
    if value:
        from stages.distortions import describe_methods

        out.print(describe_methods(), markup=False)
        raise typer.Exit()


@command("distort", help=_help())
def distort_cmd(
    data: Annotated[str, typer.Argument(help="The dataset folder (local path or URL) with items.", show_default=False)],
    method: Annotated[Optional[list[str]], typer.Option(
        "--method", "-m", metavar="NAME[:k=v,...]",
        help="Distortion to apply; repeat for several variants per item. See --list-methods. \\[default: diffusion (t=500)]",
        show_default=False)] = None,
    size: Annotated[int, typer.Option("--size", min=0, help="Resize so the short side is N pixels first (the model's input size: 336 for LLaVA-1.5); 0 keeps the original size.")] = 336,
    square: Annotated[bool, typer.Option("--square", help="Pad to a square of the CLIP mean colour first, as LLaVA-1.5's processor does: the stored image is then exactly the model's input.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Dataset seed; each image's seed is hash(seed, item id).")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="Storage: png (lossless, keeps the noise exact) or jpeg (q=--quality, 4:4:4; a third of the size).")] = "png",
    quality: Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG quality (with --format jpeg).")] = 95,
    list_methods: Annotated[bool, typer.Option("--list-methods", callback=_list_methods, is_eager=True, help="List the methods and their parameters, and exit.")] = False,
    workers: Workers = None,
    limit: Limit = None,
    executor: Executor = "local",
    ray_address: RayAddress = None,
    retry_failed: RetryFailed = False,
    verbose: Verbose = 0,
):
    from stages.distort import DistortConfig, DistortStage

    cfg = DistortConfig(methods=tuple(method or ("diffusion",)), size=size, square=square, seed=seed, format=fmt.lower(), quality=quality)
    execute_stage(data, DistortStage(cfg), workers=workers, limit=limit, executor=executor,
                  ray_address=ray_address, retry_failed=retry_failed)
