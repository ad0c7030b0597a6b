"""Price a map of the caller's own with the cost model that prices every candidate, and set it
beside accelerate's strategies and the exact optimum."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuner.core.domain import Candidate
from tuner.core.domain import DeviceMap
from tuner.core.domain import Prediction
from tuner.core.domain import Workload
from tuner.core.exceptions import ConstraintError
from tuner.workflows.listeners import OptimizeListener
from tuner.workflows.profiling import build_cost_model
from tuner.workflows.profiling import planning_hardware
from tuner.workflows.request import TuningRequest
from tuner.workflows.request import check_device_map
from tuner.workflows.request import prepare
from tuner.workflows.tuning import priced_baselines

if TYPE_CHECKING:
    from storage import Store
    from tuner.plan.costmodel import CostModel
    from tuner.workflows.request import Prepared

__all__ = ["Comparison", "compare", "price"]


@dataclass(frozen=True)
class Comparison:
    """A caller's map beside the maps that need no search, all priced by one cost model.

    Args:
        candidate: the caller's map, named ``yours``, one placement per unit.
        strategies: accelerate's strategies and the single-device maps, as `optimize` prices them.
        optimum: the exact optimum of the cost model, or None when no map fits.
        workload: what every map was priced for (`new_tokens` and `dtype` resolved).
        inputs: what the model takes as a prompt (`INPUT_KINDS`), for `Workload.describe`.
    """

    candidate: Candidate
    strategies: tuple[Candidate, ...]
    optimum: Candidate | None
    workload: Workload
    inputs: str = "text"

    @property
    def prediction(self) -> Prediction:
        assert self.candidate.prediction is not None  # priced on construction
        return self.candidate.prediction


def price(
    request: TuningRequest,
    device_map: Mapping[str, str],
    *,
    db: str | Store | None = None,
    repeats: int = 5,
    listener: OptimizeListener | None = None,
) -> Prediction:
    """The predicted latency and memory of `device_map` for the request's workload and limits.

    The profile is read from the database, or measured and stored (for a spec, estimated).

    Raises:
        ConstraintError: the map names what the model lacks, splits a unit, misses a unit, or
            uses a device the hardware lacks; or the map cannot be priced.
    """
    return _priced(request, device_map, db=db, repeats=repeats, listener=listener, compare=False).prediction


def compare(
    request: TuningRequest,
    device_map: Mapping[str, str],
    *,
    db: str | Store | None = None,
    repeats: int = 5,
    listener: OptimizeListener | None = None,
) -> Comparison:
    """`price`, with accelerate's strategies and the exact optimum priced beside it."""
    return _priced(request, device_map, db=db, repeats=repeats, listener=listener, compare=True)


def _priced(
    request: TuningRequest,
    device_map: Mapping[str, str],
    *,
    db: str | Store | None,
    repeats: int,
    listener: OptimizeListener | None,
    compare: bool,
) -> Comparison:
    from storage import opened

    listener = listener or OptimizeListener()
    prepared = prepare(request)
    if prepared.seq_note:
        listener.note(prepared.seq_note)
    dmap = check_device_map("device_map", device_map, prepared.meta, prepared.hardware)
    with opened(db) as store:
        cost_model = _cost_model(prepared, store, repeats, listener)
    # the pins it does not keep, the model's own included: as optimize labels a candidate map
    yours = Candidate("yours", dmap, _predict(cost_model, dmap), breaks=prepared.broken_by(dmap))
    if not compare:
        return Comparison(yours, (), None, prepared.workload, prepared.inputs)
    from tuner.plan.exact import solve

    strategies = tuple(priced_baselines(prepared, cost_model, listener))
    exact = solve(cost_model, pins=prepared.pins, exclude=prepared.excluded)
    optimum = None
    if exact is not None:
        optimum = Candidate("exact", exact.device_map, exact.prediction, lower_bound_s=exact.lower_bound_s)
    return Comparison(yours, strategies, optimum, prepared.workload, prepared.inputs)


def _cost_model(prepared: Prepared, store: Store, repeats: int, listener: OptimizeListener) -> CostModel:
    hardware = planning_hardware(prepared, store, listener)
    listener.phase("profiling")
    return build_cost_model(prepared, hardware, store, repeats=repeats, listener=listener)


def _predict(cost_model: CostModel, dmap: DeviceMap) -> Prediction:
    try:
        return cost_model.predict(dmap)
    except ValueError as exc:
        raise ConstraintError(f"device_map cannot be priced: {exc}") from None
