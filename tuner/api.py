"""Orchestration: measure what is missing, store it, and hand back domain objects.

This is where the profiler (torch) and the storage (SQLAlchemy) meet; neither knows the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuner.domain import HardwareProfile
from tuner.domain import ModelGraph
from tuner.domain import ModelProfile
from tuner.domain import Workload
from tuner.exceptions import ProfilingError

if TYPE_CHECKING:
    from profiler.layers import UnitEvent
    from storage import Store

__all__ = ["ProfileOutcome", "ProfileListener", "profile_model", "measure_this_machine"]


@dataclass(frozen=True)
class ProfileOutcome:
    """A profile and whether it came from the database (`reused`) or was measured now."""

    profile: ModelProfile
    profile_id: int
    reused: bool
    weights_note: str


class ProfileListener:
    """Hooks a progress display can implement; the defaults do nothing."""

    def traced(self, graph: ModelGraph, devices: Sequence[str], calls: int) -> None:
        """The graph is known; `calls` unit calls will be measured in all."""

    def unit_done(self, event: UnitEvent) -> None:
        """One unit call was measured (or shared with an identical unit)."""


def profile_model(
    model: str,
    store: Store,
    *,
    batch: int = 1,
    seq: int = 128,
    new_tokens: int | None = None,
    dtype: str = "float32",
    repeats: int = 5,
    full: bool = False,
    force: bool = False,
    trust_remote_code: bool = False,
    devices: Sequence[str] = (),
    listener: ProfileListener | None = None,
) -> ProfileOutcome:
    """Profile `model` for a workload on this machine, or return the stored profile.

    `new_tokens` left as None means 32 for a model that generates and 0 for one that does not.
    A stored profile is reused when model, hardware and workload match, unless `force` is set or
    a `full` profile is asked for and the stored one shared measurements between units.
    """
    import torch

    from profiler.hardware import describe_hardware
    from profiler.layers import profile_units
    from profiler.model import build_meta_model
    from profiler.model import trace_graph
    from profiler.source import resolve_source

    listener = listener or ProfileListener()
    source = resolve_source(model)
    meta = build_meta_model(source, dtype, trust_remote_code=trust_remote_code)
    if new_tokens is None:
        new_tokens = 32 if meta.model.can_generate() else 0
    workload = Workload(batch=batch, seq=seq, new_tokens=new_tokens, dtype=dtype)
    hardware = describe_hardware()
    compute = _compute_devices(hardware, devices)
    note = _weights_note(source.weights)

    key = (meta.fingerprint(), hardware.fingerprint, workload)
    stored = store.find_profile(*key)
    if stored is not None and not force and (stored.full or not full):
        stored_id = store.find_profile_id(*key)
        assert stored_id is not None  # found a moment ago in the same database
        return ProfileOutcome(stored, stored_id, reused=True, weights_note=note)

    started = time.perf_counter()
    graph = trace_graph(meta, workload)
    calls_per_pass = sum(u.calls + (u.decode_calls if workload.new_tokens else 0) for u in graph.units)
    listener.traced(graph, [str(d) for d in compute], calls_per_pass * len(compute))
    measured = []
    for device in compute:
        measured.extend(
            profile_units(
                meta,
                graph,
                workload,
                torch.device(device),
                repeats=repeats,
                full=full,
                on_unit=listener.unit_done,
            )
        )
    profile = ModelProfile(
        graph=graph,
        workload=workload,
        hardware_fingerprint=hardware.fingerprint,
        units=tuple(measured),
        full=full,
        seconds=time.perf_counter() - started,
    )
    profile_id = store.save_profile(profile)
    return ProfileOutcome(profile, profile_id, reused=False, weights_note=note)


def measure_this_machine(store: Store, *, on_step: Callable[[str], None] | None = None) -> HardwareProfile:
    """Measure devices and links of this machine and keep the result."""
    from profiler.hardware import measure_hardware

    hardware = measure_hardware(on_step=on_step)
    store.save_hardware(hardware)
    return hardware


def _compute_devices(hardware: HardwareProfile, requested: Sequence[str]) -> list[str]:
    """Torch device names to measure on: every GPU when there are any, else the CPU."""
    available = {
        device.key: ("cpu" if device.kind == "cpu" else f"{device.kind}:{device.key}")
        for device in hardware.compute_devices
    }
    if requested:
        unknown = [key for key in requested if key not in available]
        if unknown:
            raise ProfilingError(
                f"no compute device {', '.join(unknown)} on this machine (have: {', '.join(available)})"
            )
        return [available[key] for key in requested]
    gpus = [name for key, name in available.items() if key != "cpu"]
    return gpus or ["cpu"]


def _weights_note(weights: str) -> str:
    if weights == "config-only":
        return "no weights in the folder: profiling with random weights (cost does not depend on values)"
    return f"{weights} weights found: profiling with random values of the same shapes (cost does not depend on them)"
