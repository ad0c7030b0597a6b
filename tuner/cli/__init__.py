"""The `tuner` command line (click): it parses, calls the public API, and prints."""

from __future__ import annotations

from tuner.cli.commands import cli
from tuner.cli.commands import main

__all__ = ["cli", "main"]
