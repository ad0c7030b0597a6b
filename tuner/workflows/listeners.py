"""Hooks a progress display implements to follow profiling and tuning; the defaults do nothing,
but for notes, which are logged."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from profiler.layers import UnitEvent
    from tuner.core.domain import Candidate
    from tuner.core.domain import ModelGraph
    from tuner.core.domain import Run

__all__ = ["OptimizeListener", "ProfileListener"]


class ProfileListener:
    """Hooks of `profile`; a progress bar overrides the ones it shows."""

    def traced(self, graph: ModelGraph, devices: Sequence[str], calls: int) -> None:
        """The graph is known; `calls` unit calls will be measured in all."""

    def unit_done(self, event: UnitEvent) -> None:
        """One unit call was measured (or shared with an identical unit)."""

    def note(self, message: str) -> None:
        """Something the caller should know about the figures used, in one line (a profile
        measured while the machine was busy); logged as a warning unless a display shows it."""
        logging.getLogger("tuner").warning(message)


class OptimizeListener(ProfileListener):
    """Hooks of `optimize` (profiling's included)."""

    def phase(self, description: str) -> None:
        """A new phase starts (profiling, planning, exact optimum, search, measuring)."""

    def claimed(self, run: Run, *, joined: bool) -> None:
        """A worker (`tune_queued`) took `run` from the queue, or `joined` the search of a run
        other workers tune."""

    def searching(self, trials: int) -> None:
        """The search starts and will run `trials` trials at most."""

    def trial_done(self, candidate: Candidate) -> None:
        """One trial of the search finished."""

    def measuring(self, maps: int, rounds: int) -> None:
        """`maps` device maps are loaded and timed for real, `rounds` interleaved calls each."""

    def finished(self, run: Run, *, reused: bool, searched: int) -> None:
        """The call is done: `run` came from the database (`reused`) or was searched now, with
        `searched` trials run by this process (other workers may have run more)."""
