"""The exact optimum's proven lower bound, kept when the solver's time limit cut it short."""

from __future__ import annotations

import dataclasses

import pytest

from storage import Store
from tuner.core.codec import candidate_from_dict
from tuner.core.codec import to_dict
from tuner.core.domain import Candidate
from tuner.core.domain import Run


def test_a_lower_bound_is_stored_with_its_candidate(store: Store, run: Run) -> None:
    auto = run.baseline("auto")
    assert auto.prediction is not None
    bound = auto.prediction.latency_s * 0.97
    exact = Candidate("exact", auto.device_map, auto.prediction, lower_bound_s=bound)
    run_id = store.create_run(dataclasses.replace(run, baselines=(*run.baselines, exact)))
    found = store.get_run(run_id).baseline("exact")
    assert found.lower_bound_s == bound
    assert found.gap == pytest.approx(0.03)
    assert store.get_run(run_id).baseline("auto").lower_bound_s is None


def test_a_candidate_without_a_bound_reads_as_before(run: Run) -> None:
    data = to_dict(run.baseline("auto"))
    assert data.pop("lower_bound_s") is None
    assert candidate_from_dict(data) == run.baseline("auto")
    assert run.baseline("auto").gap is None


@pytest.mark.parametrize("bound", [-1.0, float("inf"), float("nan")])
def test_a_lower_bound_is_finite_and_not_negative(run: Run, bound: float) -> None:
    with pytest.raises(ValueError, match="a lower bound must be finite and not negative"):
        dataclasses.replace(run.baseline("auto"), lower_bound_s=bound)
