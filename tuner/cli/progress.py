"""A progress bar on stderr for profiling, searching and measuring; silent for `--json` or off a
terminal, so stdout stays clean for pipes."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import click

import tuner

if TYPE_CHECKING:
    from profiler.layers import UnitEvent
    from tuner.core.domain import Candidate
    from tuner.core.domain import ModelGraph
    from tuner.core.domain import Run

__all__ = ["ProgressBar", "WorkerLines"]


class ProgressBar(tuner.OptimizeListener):
    """Follows `tuner.optimize` (and `tuner.profile`) on stderr; also remembers how the call ended
    (`reused`, `searched`, `measured`) for the summary line."""

    def __init__(self, *, enabled: bool, first: str) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._first = first
        self._progress: Any = None
        self._task: Any = None
        self._best = math.inf
        self.reused = False
        self.searched = 0
        self.measured = 0

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn
            from rich.progress import MofNCompleteColumn
            from rich.progress import Progress
            from rich.progress import TextColumn
            from rich.progress import TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self._first, total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def phase(self, description: str) -> None:
        self._update(description=description, total=None, completed=0)

    def traced(self, graph: ModelGraph, devices: Sequence[str], calls: int) -> None:
        self._update(description=f"profiling {len(graph.units)} units on {', '.join(devices)}", total=calls)

    def unit_done(self, event: UnitEvent) -> None:
        self._update(advance=1)

    def note(self, message: str) -> None:
        # Above the bar when one is shown, so the line stays after the bar goes; else plain stderr.
        if self._progress is not None:
            self._progress.console.print(f"note: {message}", markup=False, highlight=False)
        else:
            click.echo(f"note: {message}", err=True)

    def searching(self, trials: int) -> None:
        self._update(description="searching", total=trials, completed=0)

    def measuring(self, maps: int, rounds: int) -> None:
        self.measured = maps
        self._update(description=f"measuring {maps} maps for real ({rounds} interleaved rounds)")

    def trial_done(self, candidate: Candidate) -> None:
        prediction = candidate.prediction
        if prediction is not None and prediction.feasible:
            self._best = min(self._best, prediction.latency_s)
        best = f"best {self._best:.4g} s" if self._best < math.inf else "no map fits yet"
        self._update(advance=1, description=f"searching ({best})")

    def finished(self, run: Run, *, reused: bool, searched: int) -> None:
        self.reused = reused
        self.searched = searched

    def _update(self, **fields: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **fields)


class WorkerLines(tuner.OptimizeListener):
    """What `tuner worker` says on stderr as it takes a run, before the line its end gets: which
    run, and whether it joins the search of other workers (which then say that run's end too)."""

    def __init__(self) -> None:
        #: The run taken, until its end is stored: the one a lost database leaves held.
        self.taken: int | None = None

    def claimed(self, run: Run, *, joined: bool) -> None:
        self.taken = run.id
        doing = "joining the search of" if joined else "tuning"
        what = f"{run.model_name} on {run.hardware_name} ({run.workload.describe(run.inputs)})"
        click.echo(f"run {run.id}: {doing} {what}", err=True)
