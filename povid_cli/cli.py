"""Entry point of the `povid` command: imports the command modules and runs the app."""

from __future__ import annotations

import importlib

from povid_cli.app import app

# One module per command in povid_cli/commands/; each registers itself with @command.
COMMAND_MODULES = (
    "synth",
    "init",
    "ingest",
    "hallucinate",
    "distort",
    "sample",
    "filter",
    "export",
    "train",
    "status",
    "report",
    "eval",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"povid_cli.commands.{_name}")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
