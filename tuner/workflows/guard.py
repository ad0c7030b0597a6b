"""The memory guard: before a model runs for real on this machine's cpu (a profile, `validate`,
``optimize --measure``), the peak of RAM the meta pass predicts for the workload is held against
what this machine has available, so that a workload that cannot fit is refused in one line
instead of growing until the kernel's OOM killer stops it, or stops another process.

The figure is the cost model's (`CostModel.memory`) from the meta pass's sizes of every unit: the
weights a map holds in RAM, the KV cache of the units that execute on the cpu, and the largest
working set of one of them (its activations and inputs, and its weights while streamed in). A
profile streams the weights of one unit at a time, as a map with every unit on disk does.

A batch so large that the meta pass cannot follow the model's code (code that reads the values
of an input, such as ``mask.all()``, on more elements than `KnownValues` computes) is sized from
two smaller batches: each tensor of a forward grows with the batch or keeps its size, so the peak
is a maximum of straight lines in the batch, a convex function, and the line through two batches
continued past them gives a lower bound of it. A refusal from that bound is a sure one.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import replace
from typing import TYPE_CHECKING

from tuner.core.domain import DeviceMap
from tuner.core.domain import Workload
from tuner.core.exceptions import ProfilingError
from tuner.core.exceptions import WorkloadError
from tuner.core.sizes import format_bytes

if TYPE_CHECKING:
    from profiler.model import MetaModel
    from tuner.plan.costmodel import CostModel

__all__ = ["HostPeak", "available_ram", "check_host_memory", "expanded", "host_peaks", "streamed"]

#: Prompt tokens of the larger of the two batches a batch too large for the meta pass is sized
#: from: well under what it follows (``KnownValues`` computes ids and masks of 16M tokens) and
#: cheap, as the line through two batches needs no large one.
_PROBE_TOKENS = 1 << 20


@dataclass(frozen=True)
class HostPeak:
    """Bytes of RAM a workload is predicted to need at its peak under one map.

    Args:
        nbytes: the predicted peak, or its lower bound when `at_least`.
        at_least: sized from two smaller batches (the meta pass could not run the batch itself).
        batch_that_fits: with `at_least`, the largest batch the same line keeps within the
            budget given to `host_peaks`; None otherwise.
    """

    nbytes: int
    at_least: bool = False
    batch_that_fits: int | None = None

    def refusal(self, workload: Workload, available: int) -> str:
        """Why a workload this peak does not fit is refused: both figures and what to change."""
        needs = f"at least {format_bytes(self.nbytes)}" if self.at_least else format_bytes(self.nbytes)
        change = "a smaller batch, seq or new_tokens"
        if self.batch_that_fits is not None:
            change += f" (batch {self.batch_that_fits} or less fits)"
        return (
            f"batch {workload.batch} x seq {workload.seq} with {workload.new_tokens} new tokens needs "
            f"{needs} of RAM (predicted on the meta device), and this machine has {format_bytes(available)} "
            f"available: choose {change}"
        )


#: The maps whose peaks are asked for, picked once the model is priced (a profile's placement
#: and a caller's coarse map are expanded to the model's units).
Maps = Callable[["CostModel"], Sequence[DeviceMap]]


def streamed(model: CostModel) -> list[DeviceMap]:
    """A profile's placement: every unit's weights materialised only while the unit runs, as for
    a map with every unit on disk."""
    return [DeviceMap(tuple((unit, "disk") for unit in model.graph.unit_names))]


def expanded(dmap: DeviceMap) -> Maps:
    """`dmap`, module prefixes and all, as one placement per unit; none when it does not cover
    the model (loading it then fails before anything is allocated)."""

    def pick(model: CostModel) -> list[DeviceMap]:
        try:
            return [DeviceMap.from_hf(dmap.to_hf(), model.graph.unit_names)]
        except ValueError:
            return []

    return pick


def available_ram() -> int:
    """Bytes of RAM this machine has available now (a container's limit counted)."""
    from profiler.hardware.host import host_memory

    return host_memory()[2]


def host_peaks(meta: MetaModel, workload: Workload, maps: Maps, *, budget: int) -> list[HostPeak]:
    """The RAM each map `maps` picks needs (the cpu's `DeviceMemory.total`) for `workload`; a map
    that does not match the model needs nothing.

    Raises:
        ProfilingError: the meta pass fails on the model itself, not only on the batch's size.
    """
    try:
        return [HostPeak(nbytes) for nbytes in _peaks(meta, workload, maps)]
    except ProfilingError as exc:
        if workload.batch < 3:
            raise
        failure = exc
    from profiler.inputs import model_inputs

    tokens = max(1, model_inputs(meta.runnable, workload, meta.source.path).prompt_tokens)
    high = min(workload.batch - 1, max(2, _PROBE_TOKENS // tokens))
    low = high // 2
    try:
        lows, highs = (_peaks(meta, replace(workload, batch=batch), maps) for batch in (low, high))
    except ProfilingError:
        raise failure from None  # the model's own failure, not the batch's
    peaks = []
    for at_low, at_high in zip(lows, highs, strict=True):
        slope = max(0.0, (at_high - at_low) / (high - low))
        bound = at_high + int(slope * (workload.batch - high))
        fits = high + int((budget - at_high) / slope) if slope > 0 and budget >= at_high else None
        peaks.append(HostPeak(bound, at_least=True, batch_that_fits=fits))
    return peaks


def check_host_memory(
    meta: MetaModel, workload: Workload, maps: Maps, *, doing: str, one_step: bool = False
) -> None:
    """Refuse `doing` (``profiling``, ``validating the map``...) when the meta pass predicts a
    peak of RAM above what this machine has available now. With `one_step`, the model runs the
    prefill and one decode step (a profile), not every token of `workload`.

    Raises:
        WorkloadError: in one line, naming both figures and what to change.
    """
    available = available_ram()
    runs = replace(workload, new_tokens=min(workload.new_tokens, 2)) if one_step else workload
    peak = max(host_peaks(meta, runs, maps, budget=available), key=lambda p: p.nbytes, default=None)
    if peak is not None and peak.nbytes > available:
        raise WorkloadError(f"{doing} {peak.refusal(workload, available)}")


def _peaks(meta: MetaModel, workload: Workload, maps: Maps) -> list[int]:
    import torch

    from profiler.hardware import describe_hardware
    from profiler.layers import profile_units
    from profiler.model import trace_graph
    from tuner.plan.costmodel import CostModel

    graph = trace_graph(meta, workload)
    sizes = profile_units(meta, graph, workload, torch.device("meta"))
    model = CostModel(graph, sizes, describe_hardware(), workload)
    peaks = []
    for dmap in maps(model):
        try:
            memory = model.memory(dmap)
        except ValueError:  # not a map of this model: loading it fails before any allocation
            memory = ()
        peaks.append(next((device.total for device in memory if device.device == "cpu"), 0))
    return peaks
