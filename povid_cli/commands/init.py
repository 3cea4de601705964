"""`povid init [PATH]`: write a commented povid.toml."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from povid_cli.app import Verbose, command, console


@command("init")
def init_cmd(
    path: Annotated[str, typer.Argument(help="Where to write the file.")] = "povid.toml",
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing file.")] = False,
    verbose: Verbose = 0,
):
    """Write a commented povid.toml with every option of every stage at its default.

    Sections: [ingest] [hallucinate] [distort] [sample] [filter] [export] [run]. Uncomment and
    change what you need, then run `povid synth SRC -o DATA --config povid.toml`; flags given on
    the command line override the file.

    Examples:

      povid init

      povid init configs/nightly.toml --force
    """
    from povid_cli.synth.config_file import write_example

    write_example(path, force=force)
    console.print(f"wrote {escape(path)}: edit it, then `povid synth SRC -o DATA --config {escape(path)}`")
