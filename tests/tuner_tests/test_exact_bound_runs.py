"""When the exact solver's time limit cuts it short, a run keeps the bound it proved beside its
map, and `compare` shows it too."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tuner
import tuner.plan.exact
from tuner.plan.exact import Solution
from tuner.workflows.pricing import compare
from tuner.workflows.request import TuningRequest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def stopped_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """`solve` answers as if its time limit came first, with a bound 10% under its map."""
    solve = tuner.plan.exact.solve

    def early(*args: Any, **kwargs: Any) -> Solution | None:
        found = solve(*args, **kwargs)
        return None if found is None else dataclasses.replace(found, lower_bound_s=0.9 * found.latency_s)

    monkeypatch.setattr(tuner.plan.exact, "solve", early)


@pytest.mark.usefixtures("stopped_early")
def test_a_run_stores_the_bound_the_solver_proved(
    config_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    folder = str(config_folder("llama"))
    run = tuner.optimize(folder, hardware="2xA100-80GB-nvlink", seq=8, new_tokens=2, trials=4, db=db)
    exact = run.baseline("exact")
    assert exact.prediction is not None and exact.lower_bound_s is not None
    assert exact.lower_bound_s == pytest.approx(0.9 * exact.prediction.latency_s)
    assert tuner.get_run(run.id, db=db).baseline("exact") == exact
    assert all(c.lower_bound_s is None for c in run.baselines if c.name != "exact")

    request = TuningRequest(folder, hardware="2xA100-80GB-nvlink", seq=8, new_tokens=2)
    comparison = compare(request, dict(exact.device_map.placements), db=db)
    assert comparison.optimum is not None and comparison.optimum.gap == pytest.approx(0.1)
