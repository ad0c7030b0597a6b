"""profile -> store -> plan -> (measure) -> Run, with typed arguments; the public API wraps it.

This is where the profiler (torch), the planner and the storage (SQLAlchemy) meet; none of them
knows the others. Heavy imports stay inside the functions that need them, so looking up a stored
answer (`find_tuned_run`) loads no torch.
"""

from __future__ import annotations

from tuner.core.domain import THIS_MACHINE
from tuner.workflows.listeners import OptimizeListener
from tuner.workflows.listeners import ProfileListener
from tuner.workflows.mapfile import MapArguments
from tuner.workflows.mapfile import read_map
from tuner.workflows.pricing import Comparison
from tuner.workflows.pricing import compare
from tuner.workflows.pricing import price
from tuner.workflows.profiling import ProfileOutcome
from tuner.workflows.profiling import measure_hardware
from tuner.workflows.profiling import profile
from tuner.workflows.profiling import stored_hardware
from tuner.workflows.queue import cancel_run
from tuner.workflows.queue import queue_run
from tuner.workflows.records import RunHistory
from tuner.workflows.records import SchemaUpgrade
from tuner.workflows.records import ValidationOutcome
from tuner.workflows.records import best_run
from tuner.workflows.records import database_url
from tuner.workflows.records import get_run
from tuner.workflows.records import list_candidates
from tuner.workflows.records import list_runs
from tuner.workflows.records import report_html
from tuner.workflows.records import run_history
from tuner.workflows.records import upgrade_database
from tuner.workflows.records import validate
from tuner.workflows.request import TuningRequest
from tuner.workflows.request import check_flags
from tuner.workflows.request import check_whole_numbers
from tuner.workflows.request import read_placements
from tuner.workflows.request import request_key
from tuner.workflows.tuning import OptimizeOutcome
from tuner.workflows.tuning import SearchSettings
from tuner.workflows.tuning import find_tuned_run
from tuner.workflows.tuning import optimize
from tuner.workflows.tuning import tune_queued

__all__ = [
    "THIS_MACHINE",
    "Comparison",
    "MapArguments",
    "OptimizeListener",
    "OptimizeOutcome",
    "ProfileListener",
    "ProfileOutcome",
    "RunHistory",
    "SchemaUpgrade",
    "SearchSettings",
    "TuningRequest",
    "ValidationOutcome",
    "best_run",
    "cancel_run",
    "check_flags",
    "check_whole_numbers",
    "compare",
    "database_url",
    "find_tuned_run",
    "get_run",
    "list_candidates",
    "list_runs",
    "measure_hardware",
    "stored_hardware",
    "optimize",
    "price",
    "profile",
    "queue_run",
    "read_map",
    "read_placements",
    "report_html",
    "request_key",
    "tune_queued",
    "run_history",
    "upgrade_database",
    "validate",
]
