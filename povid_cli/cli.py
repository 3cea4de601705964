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
    "sample": "sample", "correct": "correct", "filter": "filter", "export": "export", "train": "train", "merge": "train",
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
    import signal

    from povid_cli.core.errors import Interrupted

    def on_sigterm(signum, frame):
        raise Interrupted("stopped by SIGTERM; finished shards are kept, run the same command again to resume")

    signal.signal(signal.SIGTERM, on_sigterm)  # from the first moment: a SIGTERM during start-up is one line too
    argv = sys.argv[1:]
    try:
        app = load([argv[0]] if argv and argv[0] in COMMANDS else None)
    except KeyboardInterrupt as e:  # before the app's own error boundary exists
        sys.stderr.write(f"error: {getattr(e, 'message', 'interrupted')}\n")
        sys.exit(130)
    app(prog_name="povid")


if __name__ == "__main__":  # pragma: no cover
    main()
