"""Why no device map fits: the device that falls short even in the lightest map, and by how much.

Pure: it prices one map with the cost model and words the result for a person.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tuner.core.devices import main_device
from tuner.core.domain import DeviceMap
from tuner.core.domain import DeviceMemory
from tuner.core.sizes import format_bytes
from tuner.core.sizes import round_bytes

if TYPE_CHECKING:
    from tuner.plan.costmodel import CostModel

__all__ = ["why_nothing_fits"]


def why_nothing_fits(
    cost_model: CostModel, excluded: Collection[str], pins: Mapping[str, str] | None = None
) -> str:
    """One line naming the device that is over its limit in the lightest map the pins and
    exclusions allow, and by how much.

    The lightest map keeps only the first unit on the main device (accelerate executes there, so
    something must live on it) and sheds every other unit to disk, or, with disk excluded, to the
    cpu; pinned units stay where they are pinned (the model's own needs included). If even that
    map fits, what ruled every map out is how the pins and exclusions combine.
    """
    compute = [d.key for d in cost_model.hardware.compute_devices if d.key not in excluded]
    if not compute:
        return f"no device map fits: every device that computes is excluded ({', '.join(sorted(excluded))})"
    main = main_device(key for key in compute if key != "mps")
    allowed = {d.key for d in cost_model.hardware.devices} - set(excluded)  # a spec may have no disk
    shed = "disk" if "disk" in allowed else "cpu" if "cpu" in allowed else main
    names = cost_model.graph.unit_names
    placements = dict.fromkeys(names, shed)
    if main != shed:
        placements[names[0]] = main
    placements.update(pins or {})
    try:
        prediction = cost_model.predict(DeviceMap(tuple(placements.items())))
    except ValueError as exc:
        return f"no device map fits the limits ({exc})"
    if prediction.feasible:
        return "no device map fits the limits together with the pins and exclusions given"
    worst = max(prediction.shortfalls, key=lambda m: m.over_by)
    pinned = any(placements[name] != shed for name in names)
    lightest = f"every unit it may shed on {shed}" if pinned else f"every unit on {shed}"
    # a quantizer that refuses offloading is why nothing could be shed to disk
    refused = cost_model.refusal([main, "disk"]) if shed != "disk" else ""
    quantization = cost_model.graph.quantization
    share = cost_model.memory_share(worst.device)
    reserve = ""
    if quantization is not None and share < 1.0:
        reserve = (
            f" ({quantization.method} keeps {round(100 * (1 - share))}% of the device's limit in reserve)"
        )
    # every part that holds bytes, so that they add up to the total; the three a user can change
    # by the workload or the hardware always
    shown = ", ".join(
        f"{part} {format_bytes(size)}"
        for part, size in worst.parts.items()
        if size or part in ("KV cache", "working set", "runtime")
    )
    return (
        f"no device map fits: even with {lightest}, device {worst.device} "
        f"needs {format_bytes(worst.over_by)} more than its {format_bytes(worst.limit)}{reserve} "
        f"({shown}){f'; it cannot offload: {refused}' if refused else ''}{_in_all(cost_model, excluded)}"
        f"{_fitting_limit(cost_model, prediction.shortfalls)}"
    )


def _fitting_limit(cost_model: CostModel, shortfalls: Sequence[DeviceMemory]) -> str:
    """The ``max_memory`` figure (``--max-memory``) that lets the lightest map fit, when one
    device falls short only because a limit holds it below its free memory; empty otherwise.
    Worded for both: ``max_memory cpu=1.4MiB``."""
    if len(shortfalls) != 1:
        return ""
    (short,) = shortfalls
    unreserved = (short.limit + short.over_by) / cost_model.memory_share(short.device)
    needed = round_bytes(math.ceil(unreserved), up=True)
    if needed > cost_model.hardware.device(short.device).free_memory:  # beyond the device: no figure helps
        return ""
    return f"; max_memory {short.device}={format_bytes(needed).replace(' ', '')} lets it fit"


def _in_all(cost_model: CostModel, excluded: Collection[str]) -> str:
    """What the lightest map leaves unsaid when the weights alone outgrow every device allowed
    together: the model's shortfall, which no map can close (empty when they fit in all)."""
    allowed = [d.key for d in cost_model.hardware.devices if d.key not in excluded]
    room = sum(max(0, cost_model.limit(key) - cost_model.overhead(key)) for key in allowed)
    weights = cost_model.graph.total_bytes
    if weights <= room:
        return ""
    return (
        f"; the weights alone ({format_bytes(weights)}) are {format_bytes(weights - room)} more than "
        f"the devices allowed ({', '.join(allowed)}) hold in all ({format_bytes(room)})"
    )
