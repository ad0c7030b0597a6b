"""Every map of the exact solver's class (along each of its orders of units), priced by
``CostModel.predict``: the yardstick.

The tests compare `solve` with it on tiny instances; it enumerates the product of every unit's
placements, O(P^L) maps for L units and P places, so it refuses instances beyond `max_maps`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection
from collections.abc import Iterable
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tuner.core.devices import device_order
from tuner.core.domain import DeviceMap
from tuner.plan.exact.instance import _accelerators
from tuner.plan.exact.instance import _check_arguments
from tuner.plan.exact.instance import _offload_places
from tuner.plan.exact.instance import _tie_groups
from tuner.plan.exact.solver import Solution
from tuner.plan.exact.solver import unit_orders

if TYPE_CHECKING:
    from tuner.plan.costmodel import CostModel

__all__ = ["brute_force"]


def _in_class(placements: Iterable[str], accelerators: set[str], in_order: bool) -> bool:
    """Each accelerator holds one run of the non-offloaded units (in rank order if asked)."""
    runs: list[str] = []
    for place in placements:
        if place in accelerators and (not runs or runs[-1] != place):
            runs.append(place)
    if len(set(runs)) != len(runs):
        return False
    return not in_order or runs == sorted(runs, key=device_order)


def brute_force(
    model: CostModel,
    *,
    pins: Mapping[str, str] = {},  # noqa: B006 - read only
    exclude: Collection[str] = (),
    devices_in_order: bool = False,
    max_maps: int = 2_000_000,
) -> Solution | None:
    """Every map of `solve`'s class priced by ``predict``: the yardstick, for tiny models only.

    Raises:
        ValueError: the class has more than `max_maps` candidate placements to enumerate.
    """
    fixed, excluded = _check_arguments(model, pins, exclude)
    names = model.graph.unit_names
    accelerators = _accelerators(model, excluded)
    places = accelerators + _offload_places(excluded)
    choices = []
    for name in names:
        if name in fixed:
            if fixed[name] not in places:
                return None
            choices.append([fixed[name]])
        else:
            choices.append(places)
    if math.prod(len(c) for c in choices) > max_maps:
        raise ValueError(f"brute force over more than {max_maps} maps; use solve()")
    groups = _tie_groups(model)
    gpu_set = set(accelerators)
    position = {name: i for i, name in enumerate(names)}
    orders = [[position[name] for name in order] for order in unit_orders(model)]
    best: Solution | None = None
    for combo in itertools.product(*choices):
        if any(len({combo[i] for i in group}) > 1 for group in groups):
            continue
        if not any(_in_class((combo[i] for i in order), gpu_set, devices_in_order) for order in orders):
            continue
        if "cpu" in excluded and not any(place in gpu_set for place in combo):
            continue
        dmap = DeviceMap(tuple(zip(names, combo, strict=True)))
        try:
            prediction = model.predict(dmap)
        except ValueError:
            continue
        if prediction.feasible and (best is None or prediction.latency_s < best.prediction.latency_s):
            best = Solution(dmap, prediction)
    return best
