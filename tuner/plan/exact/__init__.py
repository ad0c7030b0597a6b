"""The exact optimum of the cost model over the contiguous class of device maps (see `solver`)."""

from __future__ import annotations

from tuner.plan.exact.brute_force import brute_force
from tuner.plan.exact.solver import DEFAULT_TIME_LIMIT_S
from tuner.plan.exact.solver import Solution
from tuner.plan.exact.solver import solve

__all__ = ["DEFAULT_TIME_LIMIT_S", "Solution", "solve", "brute_force"]
