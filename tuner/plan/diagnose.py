"""Why no device map fits: the device that falls short even in the lightest map, and by how much.

Pure: it prices one map with the cost model and words the result for a person.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from tuner.core.devices import main_device
from tuner.core.domain import DeviceMap
from tuner.core.sizes import format_bytes

if TYPE_CHECKING:
    from tuner.plan.costmodel import CostModel

__all__ = ["why_nothing_fits"]


def why_nothing_fits(cost_model: CostModel, excluded: Collection[str]) -> str:
    """One line naming the device that is over its limit when every unit it may shed sits on disk.

    The lightest map keeps only the first unit on the main device (accelerate executes there, so
    something must live on it); every other unit streams from disk. If even that map fits, what
    ruled every map out are the pins and exclusions.
    """
    compute = [d.key for d in cost_model.hardware.compute_devices if d.key not in excluded]
    main = main_device(key for key in compute if key != "mps")
    names = cost_model.graph.unit_names
    lightest = DeviceMap(tuple((name, "disk") for name in names))
    if main != "cpu":
        first, *rest = names
        lightest = DeviceMap(((first, main), *((name, "disk") for name in rest)))
    try:
        prediction = cost_model.predict(lightest)
    except ValueError as exc:
        return f"no device map fits the limits ({exc})"
    if prediction.feasible:
        return "no device map fits the limits together with the pins and exclusions given"
    worst = max(prediction.shortfalls, key=lambda m: m.over_by)
    return (
        f"no device map fits: even with every unit on disk, device {worst.device} needs "
        f"{format_bytes(worst.over_by)} more than its {format_bytes(worst.limit)} "
        f"(KV cache {format_bytes(worst.kv_cache)}, working set {format_bytes(worst.working_set)}, "
        f"runtime {format_bytes(worst.overhead)})"
    )
