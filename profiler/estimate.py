"""Unit profiles for the devices of a machine: measured where we have measured that very kind of
device, a calibrated roofline estimate elsewhere.

A plan for hardware described by a spec file (a 4-GPU server, priced from a laptop) needs a
compute time for every unit on every device. Three sources, best first:

1. the unit was measured on a device with the same kind and name (profile on the target);
2. a roofline estimate (FLOPs and bytes moved against the device's peak figures), scaled by the
   median measured/roofline ratio of units measured on a device of the same kind: real kernels
   reach a stable fraction of peak, which the measurement tells;
3. the plain roofline estimate, when nothing of that kind was measured.

Estimates 2 and 3 add the fixed cost eager PyTorch pays per kernel: ``kernels x kernel_s`` of the
device (the unit's kernels counted on the meta pass, `profiler.flops`), so a decode step of small
kernels is not priced at its bytes alone. The calibration ratio is taken over measured time less
that cost on the measured device, so it is not counted twice.

Memory facts (activation peak, outputs, KV cache) do not depend on the device: they come from
the memory profile (a measured pass, or the meta-device pass that sizes any workload).

Pure: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from profiler.roofline import calibration
from profiler.roofline import roofline_seconds
from tuner.core.domain import Device
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Phase
from tuner.core.domain import UnitProfile

if TYPE_CHECKING:
    from profiler.flops import UnitWork

__all__ = ["estimate_profiles"]


def estimate_profiles(
    hardware: HardwareProfile,
    memory: Sequence[UnitProfile],
    work: Mapping[tuple[str, Phase], UnitWork],
    dtype: str,
    *,
    measured: Sequence[UnitProfile] = (),
    measured_hardware: HardwareProfile | None = None,
) -> tuple[UnitProfile, ...]:
    """One UnitProfile per unit, phase and compute device of `hardware`.

    Args:
        hardware: the machine to plan for (a spec, or this machine).
        memory: one profile per unit and phase, whose byte counts are used as they are.
        work: FLOPs and bytes moved per unit and phase.
        dtype: the dtype the model runs in (selects the peak FLOP/s figure).
        measured: profiles measured on `measured_hardware`'s devices, if any.
        measured_hardware: the machine `measured` was taken on, with its devices' peak figures.

    An estimated profile has ``repeats == 0``: no timed run stands behind it. A device whose spec
    gives no speed at all gets no profiles, so no map may execute on it.
    """
    by_device: dict[str, list[UnitProfile]] = {}
    for profile in measured:
        by_device.setdefault(profile.device, []).append(profile)
    result: list[UnitProfile] = []
    for device in hardware.compute_devices:
        twin = _measured_twin(device, measured_hardware, by_device)
        if twin is not None:
            result.extend(replace(p, device=device.key) for p in by_device[twin.key])
            continue
        if not device.peak_flops and not device.memory_bandwidth:
            continue  # a spec that gives no speed for a device (an unnamed host CPU): never a compute device
        factor = _calibration_factor(device.kind, measured_hardware, by_device, work, dtype)
        for profile in memory:
            unit_work = work[(profile.unit, profile.phase)]
            seconds = roofline_seconds(unit_work.flops, unit_work.bytes_moved, device, dtype) * factor
            seconds += unit_work.kernels * device.kernel_s
            result.append(
                replace(profile, device=device.key, time_s=seconds, measured_as=profile.unit, repeats=0)
            )
    return tuple(result)


def _measured_twin(
    device: Device, measured_hardware: HardwareProfile | None, by_device: Mapping[str, list[UnitProfile]]
) -> Device | None:
    if measured_hardware is None:
        return None
    for candidate in measured_hardware.compute_devices:
        if candidate.kind == device.kind and candidate.name == device.name and candidate.key in by_device:
            return candidate
    return None


def _calibration_factor(
    kind: str,
    measured_hardware: HardwareProfile | None,
    by_device: Mapping[str, list[UnitProfile]],
    work: Mapping[tuple[str, Phase], UnitWork],
    dtype: str,
) -> float:
    """Median (measured less its kernels' fixed cost) / roofline over units measured on a device
    of the same kind; 1 without one."""
    if measured_hardware is None:
        return 1.0
    pairs: list[tuple[float, float]] = []
    for device in measured_hardware.compute_devices:
        if device.kind != kind or device.key not in by_device:
            continue
        for profile in by_device[device.key]:
            unit_work = work.get((profile.unit, profile.phase))
            if unit_work is None or profile.time_s <= 0 or profile.shared:
                continue
            estimate = roofline_seconds(unit_work.flops, unit_work.bytes_moved, device, dtype)
            work_s = profile.time_s - unit_work.kernels * device.kernel_s
            if estimate > 0 and work_s > 0:
                pairs.append((work_s, estimate))
    return calibration(pairs) if pairs else 1.0
