"""The `tuner` command line (click): it parses, calls the public API, and prints.

`main` takes over Ctrl-C and SIGTERM before it imports the commands (`tuner.cli.interrupts`), so
that an interrupt at any moment of a command, its imports included, ends it with one line and the
exit status 130; `cli`, the click group, is imported on first use.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

from tuner.cli.interrupts import exit_status
from tuner.cli.interrupts import handled

if TYPE_CHECKING:
    from tuner.cli.commands import cli as cli

__all__ = ["cli", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the command line with `argv` (default: the process's arguments) and exit
    with its status; every error is one line on stderr."""
    with handled() as interrupt:
        try:
            from tuner.cli.commands import run

            run(list(sys.argv[1:] if argv is None else argv), interrupt)
        except KeyboardInterrupt:  # before the commands could handle it (importing them), or as they ended
            interrupt.settle()
            sys.stderr.write("interrupted\n")
            sys.exit(exit_status(interrupt.received))


def __getattr__(name: str) -> Any:
    if name == "cli":
        from tuner.cli.commands import cli

        return cli
    raise AttributeError(f"module 'tuner.cli' has no attribute {name!r}")
