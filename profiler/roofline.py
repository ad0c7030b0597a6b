"""Roofline estimates of a unit's time on a device that was not measured, and their calibration.

The roofline model (S. Williams, A. Waterman, D. Patterson, "Roofline: An Insightful Visual
Performance Model for Multicore Architectures", Communications of the ACM 52(4), 2009,
https://doi.org/10.1145/1498765.1498785) bounds a kernel's speed by the device's peak compute and
by its memory bandwidth: a kernel of ``F`` FLOPs that moves ``B`` bytes takes at least
``max(F / peak, B / bandwidth)`` seconds. Real kernels reach a fraction of either roof, so an
estimate is scaled by a calibration factor, the median ratio of measured to roofline time over
units measured on a device of the same kind.

Pure arithmetic: no torch import.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.core.domain import Device

__all__ = ["roofline_seconds", "calibration", "peak_flops"]

# A device whose spec sheet gives one of these half-precision figures runs the other at the same
# rate on every GPU generation that has both (Ampere and later); older ones emulate bfloat16.
_HALF_TWINS = {"float16": "bfloat16", "bfloat16": "float16"}


def peak_flops(device: Device, dtype: str) -> float:
    """The device's peak FLOP/s for `dtype`, falling back between float16 and bfloat16.

    When ``device.peak_flops`` has no positive figure for ``float16`` but has one for
    ``bfloat16`` (or the other way round), that figure is used: on every GPU that runs both
    natively the two have the same tensor-core rate. ``float32`` never falls back.

    Raises:
        ValueError: the device has no figure for `dtype` (nor for its half-precision twin).
    """
    for name in (dtype, _HALF_TWINS.get(dtype)):
        if name is not None and device.peak_flops.get(name, 0.0) > 0:
            return device.peak_flops[name]
    known = ", ".join(sorted(k for k, v in device.peak_flops.items() if v > 0)) or "none"
    raise ValueError(
        f"device {device.key!r} ({device.name}) has no peak FLOP/s for {dtype} (it has: {known}); "
        "add it to the hardware spec file"
    )


def roofline_seconds(flops: float, bytes_moved: float, device: Device, dtype: str) -> float:
    """The roofline time of a kernel: ``max(flops / peak_flops[dtype], bytes_moved / bandwidth)``.

    O(1). See Williams, Waterman and Patterson, CACM 2009. ``peak_flops`` falls back between
    float16 and bfloat16 when the device gives only one of them (see `peak_flops`).

    Args:
        flops: floating-point operations of the kernel (a multiply-add is 2).
        bytes_moved: bytes it moves through the device's memory.
        device: the device, with ``peak_flops`` by dtype and ``memory_bandwidth`` in bytes/s.
        dtype: the dtype the kernel computes in (``float32``, ``float16``, ``bfloat16``).

    Returns:
        Seconds, a lower bound on the real time (scale it by `calibration`).

    Raises:
        ValueError: negative work, or the device lacks a peak FLOP/s for `dtype` or a memory
            bandwidth.

    Example:
        >>> from tuner.core.domain import Device
        >>> gpu = Device("0", "cuda", "A100", 80 << 30, 80 << 30,
        ...              peak_flops={"bfloat16": 312e12}, memory_bandwidth=2.0e12)
        >>> roofline_seconds(312e12, 1e9, gpu, "float16")  # compute bound
        1.0
        >>> roofline_seconds(1e9, 2.0e12, gpu, "bfloat16")  # memory bound
        1.0
    """
    if flops < 0 or bytes_moved < 0:
        raise ValueError(f"work must not be negative (flops {flops}, bytes {bytes_moved})")
    peak = peak_flops(device, dtype)
    if device.memory_bandwidth <= 0:
        raise ValueError(
            f"device {device.key!r} ({device.name}) has no memory bandwidth; add it to the hardware spec file"
        )
    return max(flops / peak, bytes_moved / device.memory_bandwidth)


def calibration(measured: Sequence[tuple[float, float]]) -> float:
    """How much slower real kernels are than the roofline on one kind of device.

    The median of ``measured / roofline`` over pairs ``(measured seconds, roofline seconds)`` of
    units measured on a device of a kind; an unmeasured device of the same kind gets its roofline
    estimates multiplied by it. The median keeps one odd unit (a kernel launch that dominates a
    tiny norm layer) from skewing the factor. It is at least 1 in practice: kernels reach a
    fraction of peak (Williams, Waterman and Patterson, CACM 2009).

    O(n log n) for n pairs.

    Raises:
        ValueError: no pairs, a negative measured time, or a roofline time that is not positive.

    Example:
        >>> calibration([(2.0, 1.0), (3.0, 1.0), (10.0, 1.0)])
        3.0
    """
    if not measured:
        raise ValueError("calibration needs at least one (measured, roofline) pair")
    ratios = []
    for seconds, roofline in measured:
        if seconds < 0:
            raise ValueError(f"measured time must not be negative ({seconds})")
        if roofline <= 0:
            raise ValueError(f"roofline time must be positive to form a ratio ({roofline})")
        ratios.append(seconds / roofline)
    return float(statistics.median(ratios))
