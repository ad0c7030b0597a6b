"""`python -m tuner` runs the command line."""

from __future__ import annotations

from tuner.cli import main

main()
