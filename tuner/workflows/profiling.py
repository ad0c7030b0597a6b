"""Measure what is missing and keep it: this machine's hardware, a model's per-unit profile, and
the cost model built from them (measured here, estimated for a spec's machine)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import replace
from typing import TYPE_CHECKING

from tuner.core.domain import AUTO_DTYPE
from tuner.core.domain import Calibration
from tuner.core.domain import HardwareProfile
from tuner.core.domain import ModelGraph
from tuner.core.domain import ModelProfile
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload
from tuner.core.exceptions import ConstraintError
from tuner.core.exceptions import ProfilingError
from tuner.core.exceptions import WorkloadError
from tuner.workflows.guard import check_host_memory
from tuner.workflows.guard import streamed
from tuner.workflows.listeners import OptimizeListener
from tuner.workflows.listeners import ProfileListener
from tuner.workflows.request import check_whole_numbers
from tuner.workflows.request import checked_workload
from tuner.workflows.request import read_device_keys
from tuner.workflows.request import read_dtype

if TYPE_CHECKING:
    from profiler.model import MetaModel
    from storage import Store
    from tuner.plan.costmodel import CostModel
    from tuner.workflows.request import Prepared

__all__ = [
    "ProfileOutcome",
    "build_cost_model",
    "measure_hardware",
    "planning_hardware",
    "profile",
]


@dataclass(frozen=True)
class ProfileOutcome:
    """A profile and whether it came from the database (`reused`) or was measured now.

    Args:
        profile: the model's graph and every unit's costs on this machine.
        profile_id: its id in the database.
        reused: found in the database rather than measured now.
        weights_note: what the profile ran with (random values of the checkpoint's shapes).
        inputs: what the model takes as a prompt (`INPUT_KINDS`).
    """

    profile: ModelProfile
    profile_id: int
    reused: bool
    weights_note: str
    inputs: str = "text"


def profile(
    model: str | os.PathLike[str],
    *,
    batch: int = 1,
    seq: int = 128,
    new_tokens: int | None = None,
    dtype: str = AUTO_DTYPE,
    repeats: int = 5,
    full: bool = False,
    force: bool = False,
    devices: Iterable[int | str] | int | str = (),
    trust_remote_code: bool = False,
    db: str | Store | None = None,
    listener: ProfileListener | None = None,
) -> ProfileOutcome:
    """Measure `model` on this machine: per-unit time, activation peak and KV cache per token.

    Identical units are measured once and share the result (``full=True`` measures each).
    `new_tokens` left as None means 32 for a model that generates and 0 for one that does not.
    `dtype` ``auto`` is what ``from_pretrained`` loads without one, the checkpoint's own; the
    profile's workload holds the dtype it resolved to.
    The profile is stored; the same call again answers from the database, unless `force` is set
    or a `full` profile is asked for and the stored one shared measurements between units.
    `devices` are compute devices to measure on (``"cpu"``, ``0``, ``"cuda:1"``), each once
    however often given; none: every GPU, else the cpu.

    Raises:
        WorkloadError: batch, seq or repeats below 1, negative new tokens, an unknown dtype.
        ConstraintError: `devices` names something that is no device.
        ProfilingError: a device this machine lacks; the model cannot be built or measured.
        ModelSourceError: no such model.
    """
    from profiler.model import build_meta_model
    from profiler.source import resolve_source
    from storage import opened

    model = os.fspath(model)
    check_whole_numbers(WorkloadError, batch=(batch, 1), seq=(seq, 1), repeats=(repeats, 1))
    if new_tokens is not None:
        check_whole_numbers(WorkloadError, new_tokens=(new_tokens, 0))
    dtype = read_dtype(dtype)
    asked_devices = read_device_keys("devices", devices)
    source = resolve_source(model)
    meta = build_meta_model(source, dtype, trust_remote_code=trust_remote_code)
    if new_tokens is None:
        new_tokens = 32 if meta.model.can_generate() else 0
    workload = Workload(batch=batch, seq=seq, new_tokens=new_tokens, dtype=meta.dtype)
    workload, inputs, seq_note = checked_workload(meta, workload, source.path)
    listener = listener or ProfileListener()
    if seq_note:
        listener.note(seq_note)
    with opened(db) as store:
        store.check_writable()  # a read-only database is found out before the work, not after
        check_profile_fits(meta, workload, store, devices=asked_devices, force=force, full=full)
        measured, profile_id, reused = _local_profile(
            meta,
            workload,
            store,
            repeats=repeats,
            full=full,
            force=force,
            devices=asked_devices,
            listener=listener,
        )
    weights_note = _weights_note(source.weights)
    return ProfileOutcome(measured, profile_id, reused=reused, weights_note=weights_note, inputs=inputs)


def measure_hardware(
    *, db: str | Store | None = None, on_step: Callable[[str], None] | None = None
) -> HardwareProfile:
    """Measure this machine's devices and links (alpha, beta of every path) and keep the result."""
    from storage import opened

    with opened(db) as store:
        store.check_writable()
        return _measure_and_store(store, on_step=on_step)


def stored_hardware(*, db: str | Store | None = None) -> HardwareProfile | None:
    """This machine as last measured and stored (what `optimize` prices with), without
    measuring; None when it was never measured into this database.

    Raises:
        StorageError: the database is not there (it is not created) or cannot be read.
    """
    from profiler.hardware import describe_hardware
    from storage import opened

    with opened(db, existing=True) as store:
        return store.find_hardware(describe_hardware().fingerprint)


def _measure_and_store(store: Store, *, on_step: Callable[[str], None] | None = None) -> HardwareProfile:
    from profiler.hardware import measure_hardware as measure

    hardware = measure(on_step=on_step)
    store.save_hardware(hardware)
    return hardware


def planning_hardware(
    prepared: Prepared, store: Store, listener: OptimizeListener, *, force: bool = False
) -> HardwareProfile:
    """The spec as read, or this machine measured (once, then read from the database; `force`
    measures again). Figures taken on a busy machine are used, and the listener told so. On this
    machine, a model that is not profiled yet is first checked to fit its RAM for the profile."""
    if prepared.hardware.source == "spec":
        return prepared.hardware
    store.check_writable()  # what is measured here is stored
    check_profile_fits(prepared.meta, prepared.workload, store, force=force)
    from profiler.hardware import MEASURING_METHOD

    stored = None if force else store.find_hardware(prepared.hardware.fingerprint)
    if stored is not None and stored.method < MEASURING_METHOD:
        # Its figures leave out, or took otherwise, costs the model prices now (an older tuner
        # stored it): once measured again, the new profile replaces it.
        listener.note("this machine's stored speeds were taken by an older tuner: measuring them again")
        stored = None
    if stored is None:
        listener.phase("measuring this machine")
        stored = _measure_and_store(store)
    if stored.busy:
        listener.note(
            f"this machine's speeds were measured while it was busy ({stored.busy}); "
            "--force measures them again"
        )
    return stored


def build_cost_model(
    prepared: Prepared,
    hardware: HardwareProfile,
    store: Store,
    *,
    repeats: int,
    listener: OptimizeListener,
    force: bool = False,
    calibration: Calibration | None = None,
) -> CostModel:
    """Profile the model on `hardware` (stored, measured here, or estimated for a spec; `force`
    measures again) and price with it under the request's limits, calibrated when given."""
    from tuner.plan.costmodel import CostModel

    graph, profiles = _unit_profiles(
        prepared.meta, prepared.workload, hardware, store, repeats=repeats, listener=listener, force=force
    )
    try:
        return CostModel(
            graph,
            profiles,
            hardware,
            prepared.workload,
            max_memory=prepared.request.max_memory,
            calibration=calibration,
        )
    except ValueError as exc:
        raise ConstraintError(str(exc)) from exc


def check_profile_fits(
    meta: MetaModel,
    workload: Workload,
    store: Store,
    *,
    devices: Sequence[str] = (),
    force: bool = False,
    full: bool = False,
) -> None:
    """Refuse to profile on the cpu a workload whose peak, as the meta pass predicts it, exceeds
    the RAM available here; a profile the database holds is read, not measured, and passes.

    Raises:
        WorkloadError: the workload does not fit, in one line with both figures.
    """
    from profiler.hardware import describe_hardware

    hardware = describe_hardware()
    if "cpu" not in _compute_devices(hardware, devices):
        return  # the GPUs' own out-of-memory errors stop a profile there, in one line
    stored = store.find_profile(meta.fingerprint(), hardware.fingerprint, workload)
    if not _reusable(stored, force=force, full=full):
        check_host_memory(meta, workload, streamed, doing="profiling", one_step=True)


def _reusable(stored: ModelProfile | None, *, force: bool, full: bool) -> bool:
    """Whether a stored profile answers a request to profile (`force`: measure again; `full`:
    every unit measured on its own)."""
    return stored is not None and not force and (stored.full or not full)


def _local_profile(
    meta: MetaModel,
    workload: Workload,
    store: Store,
    *,
    repeats: int,
    full: bool,
    force: bool,
    devices: Sequence[str],
    listener: ProfileListener,
) -> tuple[ModelProfile, int, bool]:
    """The stored profile of this model on this machine, or a new measurement; (profile, id, reused).

    A profile measured while the machine was busy is stored with its flag (`ModelProfile.busy`),
    and the listener is told whenever one is measured or reused.
    """
    stored, stored_id, reused = _find_or_measure(
        meta, workload, store, repeats=repeats, full=full, force=force, devices=devices, listener=listener
    )
    if stored.busy:
        when = "" if reused else "just "
        listener.note(
            f"profile {stored_id} was {when}measured while the machine was busy ({stored.busy}): its "
            "times may be many times this machine's; --force measures again"
        )
    return stored, stored_id, reused


def _find_or_measure(
    meta: MetaModel,
    workload: Workload,
    store: Store,
    *,
    repeats: int,
    full: bool,
    force: bool,
    devices: Sequence[str],
    listener: ProfileListener,
) -> tuple[ModelProfile, int, bool]:
    import torch

    from profiler.hardware import LoadWatch
    from profiler.hardware import describe_hardware
    from profiler.layers import profile_units
    from profiler.model import trace_graph

    hardware = describe_hardware()
    compute = _compute_devices(hardware, devices)
    key = (meta.fingerprint(), hardware.fingerprint, workload)
    stored = store.find_profile(*key)
    if _reusable(stored, force=force, full=full):
        assert stored is not None
        if any(unit.held_bytes is None or unit.disk_cast_bytes is None for unit in stored.graph.units):
            # Traced before what each unit finds held (or casts from disk) was counted: the graph
            # alone is traced again (a meta pass, seconds), else its working sets stay short.
            stored = replace(stored, graph=trace_graph(meta, workload))
            return stored, store.save_profile(stored), True
        stored_id = store.find_profile_id(*key)
        assert stored_id is not None  # found a moment ago in the same database
        return stored, stored_id, True

    started = time.perf_counter()
    graph = trace_graph(meta, workload)
    calls_per_pass = sum(u.calls + (u.decode_calls if workload.new_tokens else 0) for u in graph.units)
    listener.traced(graph, [str(d) for d in compute], calls_per_pass * len(compute))
    measured: list[UnitProfile] = []
    with LoadWatch() as watch:
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
        busy=watch.busy,
    )
    if not force:
        # Another process measured the same profile meanwhile (identical optimizes at once): the
        # first one stored stands, so that all of them price from one profile and make one run.
        stored = store.find_profile(*key)
        stored_id = store.find_profile_id(*key) if stored is not None else None
        if stored is not None and stored_id is not None and (stored.full or not full):
            return stored, stored_id, True
    return profile, store.save_profile(profile), False


def _unit_profiles(
    meta: MetaModel,
    workload: Workload,
    hardware: HardwareProfile,
    store: Store,
    *,
    repeats: int,
    listener: ProfileListener,
    force: bool,
) -> tuple[ModelGraph, tuple[UnitProfile, ...]]:
    """Measured profiles on this machine; for a spec, roofline estimates with exact memory sizes."""
    if hardware.source != "spec":
        profile, _, _ = _local_profile(
            meta, workload, store, repeats=repeats, full=False, force=force, devices=(), listener=listener
        )
        return profile.graph, profile.units
    import torch

    from profiler.estimate import estimate_profiles
    from profiler.flops import count_work
    from profiler.layers import profile_units
    from profiler.model import trace_graph

    graph = trace_graph(meta, workload)
    memory = profile_units(meta, graph, workload, torch.device("meta"))
    return graph, estimate_profiles(hardware, memory, count_work(meta, workload), workload.dtype)


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
    return (
        f"{weights} weights found: profiling with random values of the same shapes "
        "(cost does not depend on them)"
    )
