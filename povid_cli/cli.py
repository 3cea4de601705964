"""Entry point of the `povid` command: loads the command modules and runs the app.

`povid NAME ...` imports only the module of NAME (a command pays for its own imports, not for every
other command's); `povid`, `povid --help` and `from povid_cli.cli import app` load them all.
"""

from __future__ import annotations

import importlib
import sys

# command -> its module in povid_cli/commands/ (each registers itself with @command)
COMMANDS = {
    "synth": "synth", "init": "init", "ingest": "ingest", "hallucinate": "hallucinate", "distort": "distort",
    "sample": "sample", "filter": "filter", "export": "export", "train": "train", "merge": "train",
    "status": "status", "report": "report", "eval": "eval",
}


def load(names: list[str] | None = None):
    """Register the given commands (all of them when None) and return the typer app."""
    from povid_cli.app import app

    for module in dict.fromkeys(COMMANDS[n] for n in (names or COMMANDS)):
        importlib.import_module(f"povid_cli.commands.{module}")
    return app


def __getattr__(name: str):
    if name == "app":  # `from povid_cli.cli import app`: the whole CLI
        return load()
    raise AttributeError(name)


def main() -> None:
    argv = sys.argv[1:]
    load([argv[0]] if argv and argv[0] in COMMANDS else None)(prog_name="povid")


if __name__ == "__main__":  # pragma: no cover
    main()
