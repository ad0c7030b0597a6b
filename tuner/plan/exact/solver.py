"""The exact optimum of the cost model: the fastest device map of the contiguous class that fits.

The class (DESIGN.md, "The exact optimum"). Units keep their execution order. Every GPU a map uses
holds one contiguous block of the units that are not offloaded (GPUs may be skipped; the order of
GPUs along the model is free unless ``devices_in_order``); any unit may instead be placed on
``cpu`` or ``disk``, from where its weights stream into the main device (the lowest GPU of the
map) on every call. Maps without a GPU (everything on ``cpu``/``disk``, running on the cpu) are in
the class too. Pins fix a unit's placement; excluded devices are never placed on (an excluded
``cpu`` also rules out the maps that run on the cpu); the units of a tied group share a placement.

The objective is `CostModel.predict` itself: least ``latency_s`` (prefill + decode steps x decode)
among the maps it calls ``feasible``, every term priced as ``predict`` prices it: compute where a
unit runs, weights streamed for offloaded units, a transfer for every edge whose ends run on
different devices (long-range edges and the model's inputs, which live on the main device,
included), and per device resident weights + offloaded buffers + KV cache + the *largest* working
set + runtime overhead against the limit.

Method: a label-setting dynamic programme over the units in execution order (the
resource-constrained shortest path technique of Desrochers and Soumis, "A generalized permanent
labelling algorithm for the shortest path problem with time windows", INFOR 26(3), 1988), with a
bitmask over the GPUs used (Held and Karp, "A dynamic programming approach to sequencing
problems", J. SIAM 10(1), 1962) so that every order of GPUs is tried, and branch and bound.

* One sub-problem per main device (`instance.py`): each GPU without a lower interchangeable twin,
  and the cpu for maps without one; GPUs that are interchangeable open in index order only.
* The states, labels and their Pareto sets (`labels.py`).
* Branch and bound: a label is dropped when its latency plus an admissible bound on the rest
  (`bounds.py`) reaches the best complete map known, which narrow beam passes of the same
  programme (12, then 96, then 768 labels per unit until one finds a map) provide first; the
  sub-problems are searched in the order of their root bounds.

Complexity: O(L x 2^K x K x P) states for L units, K GPUs and P tuples of devices of open
producers (1 to K^2 in real models), each with a Pareto set of labels and O(K) moves per label.
Without memory pressure a set holds at most the O(L) start points of the open block. With it,
choosing which units stream is a 0/1 knapsack, so the problem is NP-hard and no polynomial exact
method exists: the sets are then pseudo-polynomial (distinct byte sums), and small when units
repeat, since identical decoder layers give identical labels that merge. Meant for up to 8 GPUs
(2^K states), far faster with interchangeable GPUs; slowest when much must stream and many maps
tie (which layers stream is then nearly free), see benchmarks/exact_speed.py. Sums run in a
different order than in ``predict``; the map returned is priced by ``predict`` itself and is
optimal to ~1e-12 relative.
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Mapping
from dataclasses import dataclass
from math import inf
from typing import TYPE_CHECKING

from tuner.core.domain import DeviceMap
from tuner.core.domain import Prediction
from tuner.plan.exact.bounds import _Bounds
from tuner.plan.exact.instance import _check_arguments
from tuner.plan.exact.instance import _Instance
from tuner.plan.exact.instance import _Problem
from tuner.plan.exact.labels import _Found
from tuner.plan.exact.labels import _search

if TYPE_CHECKING:
    from tuner.plan.costmodel import CostModel

__all__ = ["Solution", "solve"]

#: Labels kept per unit in the narrow passes that find a good map before the exact pass.
_BEAMS = (12, 96, 768)


@dataclass(frozen=True)
class Solution:
    """The optimal map of the class and its price under ``CostModel.predict``."""

    device_map: DeviceMap
    prediction: Prediction

    @property
    def latency_s(self) -> float:
        return self.prediction.latency_s


def solve(
    model: CostModel,
    *,
    pins: Mapping[str, str] = {},  # noqa: B006 - read only
    exclude: Collection[str] = (),
    devices_in_order: bool = False,
) -> Solution | None:
    """The fastest map of the contiguous class (see the module docstring) that fits.

    Args:
        model: prices maps; its ``predict`` is the objective.
        pins: unit name -> placement (``"0"``, ``"cpu"``, ``"disk"``...) the map must use.
        exclude: devices no unit may be placed on (``"cpu"`` also rules out running on it).
        devices_in_order: GPUs follow the model in increasing index order (else any order).

    Returns:
        The optimal map with its prediction, or None when no map of the class fits.

    Raises:
        ValueError: a pin names an unknown unit or something that is not a device.

    Example:
        >>> solution = solve(model, pins={"lm_head": "1"}, exclude={"disk"})  # doctest: +SKIP
        >>> solution.device_map.to_hf(), solution.prediction.latency_s  # doctest: +SKIP
    """
    return _solve(model, pins, exclude, devices_in_order, prune=True)


def _solve(
    model: CostModel, pins: Mapping[str, str], exclude: Collection[str], devices_in_order: bool, prune: bool
) -> Solution | None:
    """`solve`; without `prune` the labels are cut by dominance alone (the bounds' yardstick)."""
    fixed, excluded = _check_arguments(model, pins, exclude)
    inst = _Instance(model, fixed, excluded, devices_in_order)
    if inst.allowed is None or inst.n == 0:
        return None
    problems = [(problem, _Bounds(problem)) for problem in (_Problem(inst, main) for main in inst.mains())]
    problems.sort(key=lambda pair: pair[1].root_bound())
    best: _Found | None = None
    bound = inf
    # narrow passes first, wider until one finds a map: a good map makes the exact pass prune hard
    for width in _BEAMS if prune else ():
        for problem, bounds in problems:
            found = _search(problem, bounds, bound, beam=width)
            if found is not None and found.latency < bound:
                best, bound = found, found.latency
        if best is not None:
            break
    for problem, bounds in problems:
        found = _search(problem, bounds, bound if prune else inf)
        if found is not None and found.latency < bound:
            best, bound = found, found.latency
    if best is None:
        return None
    placements = zip(inst.names, best.placements, strict=True)
    dmap = DeviceMap(tuple((name, inst.keys[place]) for name, place in placements))
    return Solution(dmap, model.predict(dmap))
