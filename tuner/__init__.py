"""Find where each part of a large model should live so that it runs fastest while it fits.

    import tuner
    dmap = tuner.device_map("./my-llama", max_memory={0: "20GiB", "cpu": "64GiB"}, seq=512)
    model = tuner.from_pretrained("./my-llama", max_memory={0: "20GiB", "cpu": "64GiB"}, seq=512)

Importing this package loads nothing: each name is imported on first use (PEP 562), and a stored
answer (`device_map` of a request tuned before) is read without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "best_run",
            "cancel_run",
            "compare",
            "database_url",
            "device_map",
            "fetch_map",
            "from_pretrained",
            "get_run",
            "list_candidates",
            "list_runs",
            "list_specs",
            "specs_folder",
            "measure_hardware",
            "stored_hardware",
            "open_database",
            "optimize",
            "price",
            "profile",
            "queue_run",
            "read_map",
            "read_spec",
            "report_html",
            "tune_queued",
            "run_history",
            "upgrade_database",
            "validate",
            "write_spec",
            "PricingOptions",
            "TuningOptions",
        ),
        "tuner.api",
    ),
    **dict.fromkeys(
        (
            "Comparison",
            "OptimizeListener",
            "ProfileListener",
            "ProfileOutcome",
            "RunHistory",
            "SchemaUpgrade",
            "THIS_MACHINE",
            "ValidationOutcome",
        ),
        "tuner.workflows",
    ),
    **dict.fromkeys(
        (
            "Candidate",
            "DeviceMap",
            "HardwareProfile",
            "ModelGraph",
            "ModelProfile",
            "Prediction",
            "Run",
            "RunStatus",
            "UnitProfile",
            "Workload",
        ),
        "tuner.core.domain",
    ),
    **dict.fromkeys(
        (
            "ConstraintError",
            "InfeasibleError",
            "ModelSourceError",
            "ProfilingError",
            "RunInterrupted",
            "RunNotFoundError",
            "SchemaOutdatedError",
            "SpecError",
            "StorageError",
            "TunerError",
            "UnfinishedRunWarning",
            "WorkloadError",
        ),
        "tuner.core.exceptions",
    ),
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tuner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from tuner.api import PricingOptions as PricingOptions
    from tuner.api import TuningOptions as TuningOptions
    from tuner.api import best_run as best_run
    from tuner.api import cancel_run as cancel_run
    from tuner.api import compare as compare
    from tuner.api import database_url as database_url
    from tuner.api import device_map as device_map
    from tuner.api import fetch_map as fetch_map
    from tuner.api import from_pretrained as from_pretrained
    from tuner.api import get_run as get_run
    from tuner.api import list_candidates as list_candidates
    from tuner.api import list_runs as list_runs
    from tuner.api import list_specs as list_specs
    from tuner.api import measure_hardware as measure_hardware
    from tuner.api import open_database as open_database
    from tuner.api import optimize as optimize
    from tuner.api import price as price
    from tuner.api import profile as profile
    from tuner.api import queue_run as queue_run
    from tuner.api import read_map as read_map
    from tuner.api import read_spec as read_spec
    from tuner.api import report_html as report_html
    from tuner.api import run_history as run_history
    from tuner.api import specs_folder as specs_folder
    from tuner.api import stored_hardware as stored_hardware
    from tuner.api import tune_queued as tune_queued
    from tuner.api import upgrade_database as upgrade_database
    from tuner.api import validate as validate
    from tuner.api import write_spec as write_spec
    from tuner.core.domain import Candidate as Candidate
    from tuner.core.domain import DeviceMap as DeviceMap
    from tuner.core.domain import HardwareProfile as HardwareProfile
    from tuner.core.domain import ModelGraph as ModelGraph
    from tuner.core.domain import ModelProfile as ModelProfile
    from tuner.core.domain import Prediction as Prediction
    from tuner.core.domain import Run as Run
    from tuner.core.domain import RunStatus as RunStatus
    from tuner.core.domain import UnitProfile as UnitProfile
    from tuner.core.domain import Workload as Workload
    from tuner.core.exceptions import ConstraintError as ConstraintError
    from tuner.core.exceptions import InfeasibleError as InfeasibleError
    from tuner.core.exceptions import ModelSourceError as ModelSourceError
    from tuner.core.exceptions import ProfilingError as ProfilingError
    from tuner.core.exceptions import RunInterrupted as RunInterrupted
    from tuner.core.exceptions import RunNotFoundError as RunNotFoundError
    from tuner.core.exceptions import SchemaOutdatedError as SchemaOutdatedError
    from tuner.core.exceptions import SpecError as SpecError
    from tuner.core.exceptions import StorageError as StorageError
    from tuner.core.exceptions import TunerError as TunerError
    from tuner.core.exceptions import UnfinishedRunWarning as UnfinishedRunWarning
    from tuner.core.exceptions import WorkloadError as WorkloadError
    from tuner.workflows import THIS_MACHINE as THIS_MACHINE
    from tuner.workflows import Comparison as Comparison
    from tuner.workflows import OptimizeListener as OptimizeListener
    from tuner.workflows import ProfileListener as ProfileListener
    from tuner.workflows import ProfileOutcome as ProfileOutcome
    from tuner.workflows import RunHistory as RunHistory
    from tuner.workflows import SchemaUpgrade as SchemaUpgrade
    from tuner.workflows import ValidationOutcome as ValidationOutcome
