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
