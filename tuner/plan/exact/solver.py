"""The exact optimum of the cost model: the fastest device map of the contiguous class that fits.

The class (DESIGN.md, "The exact optimum"). Units keep their execution order. Every GPU a map uses
holds one contiguous block of the units that are not offloaded (GPUs may be skipped; the order of
GPUs along the model is free unless ``devices_in_order``); any unit may instead be placed on
``cpu`` or ``disk``, from where its weights stream into the main device (the lowest GPU of the
map) on every call. Maps without a GPU (everything on ``cpu``/``disk``, running on the cpu) are in
the class too. Pins fix a unit's placement; excluded devices are never placed on (an excluded
``cpu`` also rules out the maps that run on the cpu); the units of a tied group share a placement.
When the members of a tied group lie apart (an embedding tied to the head), the class also holds
the maps that are contiguous once each group's later members are moved next to its first
(`unit_orders`): the head on the embedding's GPU, the layers between spread over other GPUs, as
accelerate places a tied model. No price depends on the order of units, so each order is searched
as its own problem and the union's optimum is the best of theirs.

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
  and the cpu for maps without one; GPUs that are interchangeable open in index order only, and
  of each class only as many as some optimal map needs are kept (`_Instance.room_for`: a
  1000-GPU spec of one kind of GPU plans a 70B model on a handful).
* A mixture of experts decodes on the cpu's own path, with smaller working sets, when the map
  runs on the cpu with the model's device unit there (`CostModel._decodes_off_cpu`); those maps
  are one more sub-problem, with the device unit pinned to the cpu and the smaller sets, and the
  other sub-problems count the larger sets, which is exact for their maps.
* The states, labels and their Pareto sets (`labels.py`).
* Branch and bound: a label is dropped when its latency plus an admissible bound on the rest
  (`bounds.py`) reaches the best complete map known, which narrow beam passes of the same
  programme (12, then 96, then 768 labels per unit until one finds a map) provide first; the
  sub-problems are searched in the order of their root bounds.
* Anytime: past its time limit, with a map in hand, the search stops and proves a lower bound,
  the least promise (a label's latency plus its bound on the rest) among the labels it had yet
  to extend, and the root bounds of the sub-problems not reached (Land and Doig, "An automatic
  method of solving discrete programming problems", Econometrica 28(3), 1960: the least bound
  of the open nodes bounds the optimum).

Complexity: O(L x 2^K x K x P) states for L units, K GPUs and P tuples of devices of open
producers (1 to K^2 in real models), each with a Pareto set of labels and O(K) moves per label.
Without memory pressure a set holds at most the O(L) start points of the open block. With it,
choosing which units stream is a 0/1 knapsack, so the problem is NP-hard and no polynomial exact
method exists: the sets are then pseudo-polynomial (distinct byte sums), and small when units
repeat, since identical decoder layers give identical labels that merge. Meant for up to 8 GPUs
(2^K states), far faster with interchangeable GPUs; slowest when much must stream and many maps
tie (which layers stream is then nearly free), see benchmarks/exact_speed.py: there the time
limit answers with a gap. Sums run in a
different order than in ``predict``; the map returned is priced by ``predict`` itself and is
optimal to ~1e-12 relative.
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Mapping
from dataclasses import dataclass
from math import inf
from time import monotonic
from typing import TYPE_CHECKING

from tuner.core.domain import DeviceMap
from tuner.core.domain import Prediction
from tuner.plan.exact.bounds import _Bounds
from tuner.plan.exact.instance import _check_arguments
from tuner.plan.exact.instance import _Instance
from tuner.plan.exact.instance import _Problem
from tuner.plan.exact.labels import _Found
from tuner.plan.exact.labels import _OutOfTime
from tuner.plan.exact.labels import _search

if TYPE_CHECKING:
    from tuner.plan.costmodel import CostModel

__all__ = ["DEFAULT_TIME_LIMIT_S", "Solution", "solve", "unit_orders"]

#: Labels kept per unit in the narrow passes that find a good map before the exact pass.
_BEAMS = (12, 96, 768)

#: Seconds `solve` searches by default before it answers with the best map found and a proven
#: lower bound: far more than any instance of the tests needs, well within a run's budget.
DEFAULT_TIME_LIMIT_S = 5.0

#: A lower bound this close to the map's latency proves it optimal (sums run in another order
#: than in ``predict``).
_PROVEN_RTOL = 1e-9


@dataclass(frozen=True)
class Solution:
    """The best map of the class found and its price under ``CostModel.predict``.

    Args:
        device_map: the map.
        prediction: its price.
        lower_bound_s: None when the map is proven optimal; else the time limit stopped the
            search first, and no map of the class is faster than this (seconds per generate
            call, as ``latency_s``).
    """

    device_map: DeviceMap
    prediction: Prediction
    lower_bound_s: float | None = None

    def __post_init__(self) -> None:
        if self.lower_bound_s is not None and not 0 <= self.lower_bound_s <= self.latency_s:
            raise ValueError(f"a lower bound of {self.lower_bound_s} s on a map of {self.latency_s} s")

    @property
    def latency_s(self) -> float:
        return self.prediction.latency_s

    @property
    def floor_s(self) -> float:
        """What the search proved no map of the class beats: the map's latency when it is
        optimal, else the lower bound."""
        return self.latency_s if self.lower_bound_s is None else self.lower_bound_s

    @property
    def optimal(self) -> bool:
        """Proven optimal: the search ran to its end."""
        return self.lower_bound_s is None

    @property
    def gap(self) -> float:
        """How far above the optimum the map may be, relative to its latency (0 when optimal)."""
        if self.lower_bound_s is None or self.latency_s <= 0:
            return 0.0
        return (self.latency_s - self.lower_bound_s) / self.latency_s


def solve(
    model: CostModel,
    *,
    pins: Mapping[str, str] = {},  # noqa: B006 - read only
    exclude: Collection[str] = (),
    devices_in_order: bool = False,
    time_limit: float | None = DEFAULT_TIME_LIMIT_S,
) -> Solution | None:
    """The fastest map of the contiguous class (see the module docstring) that fits.

    Anytime: once `time_limit` seconds have passed and a map is known, the search stops and
    answers with the best map found and a proven lower bound on every map of the class (the
    least of the sub-problems' bounds: the frontier of the one being searched, the root bounds
    of those not reached), so the gap to the optimum is known. Until a first map is found (or
    none is proven to fit) it searches on.

    Args:
        model: prices maps; its ``predict`` is the objective.
        pins: unit name -> placement (``"0"``, ``"cpu"``, ``"disk"``...) the map must use.
        exclude: devices no unit may be placed on (``"cpu"`` also rules out running on it).
        devices_in_order: GPUs follow the model in increasing index order (else any order).
        time_limit: seconds before answering with a proven gap; None searches to the optimum.

    Returns:
        The optimal map with its prediction (``lower_bound_s`` None), the best map found with
        a lower bound when the time ran out, or None when no map of the class fits.

    Raises:
        ValueError: a pin names an unknown unit or something that is not a device, or the
            time limit is negative.

    Example:
        >>> solution = solve(model, pins={"lm_head": "1"}, exclude={"disk"})  # doctest: +SKIP
        >>> solution.device_map.to_hf(), solution.prediction.latency_s  # doctest: +SKIP
        >>> solution.optimal or f"within {solution.gap:.1%} of the optimum"  # doctest: +SKIP
    """
    if time_limit is not None and not time_limit >= 0:
        raise ValueError(f"time_limit must be 0 or more seconds (got {time_limit})")
    return _solve(model, pins, exclude, devices_in_order, prune=True, time_limit=time_limit)


def _solve(
    model: CostModel,
    pins: Mapping[str, str],
    exclude: Collection[str],
    devices_in_order: bool,
    prune: bool,
    time_limit: float | None = None,
) -> Solution | None:
    """`solve`; without `prune` the labels are cut by dominance alone (the bounds' yardstick).

    The class is searched along each of `unit_orders`, sharing the time limit; the best map
    is kept, and what each order's search proved bounds the optimum of their union.
    """
    start = monotonic()
    orders = unit_orders(model)
    found: list[Solution | None] = []
    for k, order in enumerate(orders):
        left = None if time_limit is None else max(0.0, start + time_limit - monotonic()) / (len(orders) - k)
        ordered = model if k == 0 else model.with_units_in(order)
        found.append(_solve_in_order(ordered, pins, exclude, devices_in_order, prune, left))
    solutions = [solution for solution in found if solution is not None]
    if not solutions:
        return None
    best = min(solutions, key=lambda solution: solution.latency_s)
    dmap = DeviceMap(tuple((name, best.device_map.placement(name)) for name in model.graph.unit_names))
    prediction = model.predict(dmap)
    # each order's proven floor; none fitting proves that none of its class does
    floors = [inf if solution is None else solution.floor_s for solution in found]
    lower = max(0.0, min(floors))
    proven = lower >= prediction.latency_s * (1 - _PROVEN_RTOL)
    return Solution(dmap, prediction, None if proven else lower)


def unit_orders(model: CostModel) -> list[tuple[str, ...]]:
    """The orders of units along which the class is searched: execution order, and, when the
    members of a tied group lie apart (an embedding tied to the head), the same order with each
    group's later members moved next to its first, so that the head may share the embedding's
    GPU while the layers between spread over others, as accelerate places them."""
    names = model.graph.unit_names
    groups = [group for group in model.graph.placement_groups() if len(group) > 1]
    if all(group[-1] - group[0] == len(group) - 1 for group in groups):
        return [names]
    after_first = {group[0]: group[1:] for group in groups}
    moved = {i for group in groups for i in group[1:]}
    order: list[str] = []
    for i, name in enumerate(names):
        if i not in moved:
            order.append(name)
            order.extend(names[j] for j in after_first.get(i, ()))
    return [names, tuple(order)]


def _solve_in_order(
    model: CostModel,
    pins: Mapping[str, str],
    exclude: Collection[str],
    devices_in_order: bool,
    prune: bool,
    time_limit: float | None,
) -> Solution | None:
    """The class along the model's own order of units (`CostModel.with_units_in` gives others)."""
    deadline = inf if time_limit is None else monotonic() + time_limit
    fixed, excluded = _check_arguments(model, pins, exclude)
    inst = _Instance(model, fixed, excluded, devices_in_order)
    if inst.allowed is None or inst.n == 0:
        return None
    problems = [(problem, _Bounds(problem)) for problem in (_Problem(inst, main) for main in inst.mains())]
    device_unit = model.graph.device_unit
    if model.working_set_bytes_decoding_on_cpu is not None and fixed.get(device_unit, "cpu") == "cpu":
        # generate decodes a mixture of experts on the cpu's own path, with smaller working sets,
        # when the map runs on the cpu with the device unit there: those maps are a sub-problem
        # of their own, where the others count the larger sets and would miss a map that fits.
        on_cpu = _Instance(
            model, {**fixed, device_unit: "cpu"}, excluded, devices_in_order, cpu_decode_path=True
        )
        if on_cpu.allowed is not None and on_cpu.cpu_main:
            problem = _Problem(on_cpu, on_cpu.cpu)
            problems.append((problem, _Bounds(problem)))
    problems.sort(key=lambda pair: pair[1].root_bound())
    # per sub-problem, proven: each of its maps cheaper than the best one known costs this much
    floors = [bounds.root_bound() for _, bounds in problems]
    best: _Found | None = None
    bound = inf
    stopped = False
    try:
        # narrow passes first, wider until one finds a map: a good map makes the exact pass prune hard
        for width in _BEAMS if prune else ():
            for problem, bounds in problems:
                found = _search(problem, bounds, bound, beam=width, deadline=deadline if best else inf)
                if found is not None and found.latency < bound:
                    best, bound = found, found.latency
            if best is not None:
                break
        for k, (problem, bounds) in enumerate(problems):
            try:
                found = _search(problem, bounds, bound if prune else inf, deadline=deadline if best else inf)
            except _OutOfTime as out:
                floors[k] = max(floors[k], out.floor)
                raise
            floors[k] = bound if found is None else found.latency
            if found is not None and found.latency < bound:
                best, bound = found, found.latency
    except _OutOfTime:
        stopped = True
    if best is None:
        return None
    placements = zip(inst.names, best.placements, strict=True)
    dmap = DeviceMap(tuple((name, inst.keys[place]) for name, place in placements))
    prediction = model.predict(dmap)
    # The search leaves out accelerate's hooks, which cost every map that spans devices or uses
    # disk the same (`CostModel.hooks_seconds`) and a map on one device nothing: so the best map
    # it finds is the optimum unless a map on one device beats it once hooks are priced.
    for main in inst.mains():
        if inst.allowed is None or not all(main in allowed for allowed in inst.allowed):
            continue
        alone = DeviceMap(tuple((name, inst.keys[main]) for name in inst.names))
        try:
            priced = model.predict(alone)
        except ValueError:
            continue
        if priced.feasible and priced.latency_s < prediction.latency_s:
            dmap, prediction = alone, priced
    lower = max(0.0, min(min(floors), prediction.latency_s)) if stopped else None
    if lower is not None and lower >= prediction.latency_s * (1 - _PROVEN_RTOL):
        lower = None  # what was left to search could not beat it: proven after all
    return Solution(dmap, prediction, lower)
