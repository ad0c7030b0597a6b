"""The one exceptions module of the project.

The library raises these; only the command line renders them (one line, non-zero exit).
"""

from __future__ import annotations


class TunerError(Exception):
    """Root of every error the tuner raises on purpose."""


class ModelSourceError(TunerError):
    """The model could not be found or read (missing path, bad config, not in the local cache)."""


class SpecError(TunerError, ValueError):
    """A hardware spec file that cannot be read, or a field in it that is missing or invalid."""


class WorkloadError(TunerError, ValueError):
    """A workload that cannot be run (batch below 1, unknown dtype, generation on an encoder)."""


class ProfilingError(TunerError, RuntimeError):
    """The model could not be traced or measured."""


class RunNotFoundError(TunerError, LookupError):
    """No stored run has that id."""


class ConstraintError(TunerError, ValueError):
    """Memory limits, pins or exclusions that name what is not there or contradict each other."""


class InfeasibleError(TunerError):
    """No device map of the model fits the memory limits, even with disk."""


class StorageError(TunerError):
    """The database could not be opened, read or written."""


class SchemaOutdatedError(StorageError):
    """The database schema differs from the one this version of the tuner writes."""


class UnfinishedRunWarning(UserWarning):
    """A map was asked of a run that is not complete (running, interrupted or failed): what is
    given is its best so far, which more trials may still beat."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped `optimize`; the run, if one was stored, keeps what it found.

    A `KeyboardInterrupt`, not a `TunerError`: code that catches errors must still stop.

    Args:
        run_id: the run that was stopped, or None when it was not stored yet (still profiling).
        trials: trials the run holds.
        measuring: the stop came while the best maps were measured for real; the run is then
            complete with its modelled winner, and the same call measures it.
        asked: the trials the stopped call asked for, which a resume must ask for again (a run
            of `optimize` does not keep them); None when not known.
    """

    def __init__(
        self, run_id: int | None, *, trials: int = 0, measuring: bool = False, asked: int | None = None
    ) -> None:
        super().__init__(run_id)
        self.run_id = run_id
        self.trials = trials
        self.measuring = measuring
        self.asked = asked

    def __str__(self) -> str:
        if self.run_id is None:
            return "interrupted before a run was stored"
        if self.measuring:
            return (
                f"interrupted while measuring: run {self.run_id} keeps its modelled winner and no "
                "measurement; the same call measures it"
            )
        return f"interrupted: run {self.run_id} keeps its {self.trials} trials and can be resumed"
