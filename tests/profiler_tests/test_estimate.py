from __future__ import annotations

import dataclasses

import pytest

from profiler.estimate import estimate_profiles
from profiler.flops import UnitWork
from tuner.core.domain import Device
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Phase
from tuner.core.domain import UnitProfile

GiB = 1 << 30


def cpu(name: str, flops: float) -> Device:
    return Device(
        "cpu", "cpu", name, 64 * GiB, 60 * GiB, peak_flops={"float32": flops}, memory_bandwidth=1e10
    )


def gpu(key: str) -> Device:
    return Device(
        key, "cuda", "L4", 24 * GiB, 23 * GiB, peak_flops={"float16": 121e12}, memory_bandwidth=300e9
    )


WORK = {
    ("a", Phase.PREFILL): UnitWork(flops=2 * 10**9, bytes_moved=10**6),  # compute bound
    ("b", Phase.PREFILL): UnitWork(flops=10**6, bytes_moved=10**9),  # memory bound
}
MEMORY = [
    UnitProfile("a", "meta", Phase.PREFILL, 0.0, 1000, 100, repeats=0),
    UnitProfile("b", "meta", Phase.PREFILL, 0.0, 2000, 200, repeats=0),
]


def test_unmeasured_gpu_gets_the_plain_roofline() -> None:
    host = Device(
        "cpu", "cpu", "host", 64 * GiB, 60 * GiB, peak_flops={"float16": 1e11}, memory_bandwidth=1e10
    )
    spec = HardwareProfile(devices=(gpu("0"), gpu("1"), host), source="spec")
    profiles = {(p.unit, p.device): p for p in estimate_profiles(spec, MEMORY, WORK, "float16")}
    assert profiles[("a", "0")].time_s == pytest.approx(2e9 / 121e12)
    assert profiles[("b", "1")].time_s == pytest.approx(1e9 / 300e9)
    assert profiles[("b", "1")].activation_peak_bytes == 2000
    assert profiles[("a", "0")].repeats == 0


def test_same_device_measured_is_used_as_measured() -> None:
    here = HardwareProfile(devices=(cpu("EPYC", 1e11),), source="measured")
    measured = [
        UnitProfile("a", "cpu", Phase.PREFILL, 0.05, 1000, 100, repeats=5),
        UnitProfile("b", "cpu", Phase.PREFILL, 0.20, 2000, 200, repeats=5),
    ]
    target = HardwareProfile(devices=(cpu("EPYC", 1e11),), source="spec")
    profiles = estimate_profiles(target, MEMORY, WORK, "float32", measured=measured, measured_hardware=here)
    assert [p.time_s for p in profiles] == [0.05, 0.20]


def test_other_device_of_the_same_kind_is_calibrated() -> None:
    here = HardwareProfile(devices=(cpu("EPYC", 1e11),), source="measured")
    # measured 2x and 4x slower than this cpu's roofline: the median factor is 3
    measured = [
        UnitProfile("a", "cpu", Phase.PREFILL, 2 * (2e9 / 1e11), 1000, 100, repeats=5),
        UnitProfile("b", "cpu", Phase.PREFILL, 4 * (1e9 / 1e10), 2000, 200, repeats=5),
    ]
    target = HardwareProfile(devices=(cpu("Xeon", 4e11),), source="spec")
    profiles = {p.unit: p for p in estimate_profiles(target, MEMORY, WORK, "float32", measured=measured,
                                                      measured_hardware=here)}  # fmt: skip
    assert profiles["a"].time_s == pytest.approx(3 * 2e9 / 4e11)
    assert profiles["b"].time_s == pytest.approx(3 * 1e9 / 1e10)


def test_each_kernel_adds_the_devices_fixed_cost_to_the_roofline() -> None:
    work = {
        ("a", Phase.PREFILL): UnitWork(flops=2 * 10**9, bytes_moved=10**6, kernels=40),
        ("b", Phase.PREFILL): UnitWork(flops=10**6, bytes_moved=10**9, kernels=3),
    }
    launching = Device("0", "cuda", "L4", 24 * GiB, 23 * GiB, peak_flops={"float16": 121e12},
                       memory_bandwidth=300e9, kernel_s=6e-6)  # fmt: skip
    spec = HardwareProfile(devices=(launching,), source="spec")
    profiles = {p.unit: p for p in estimate_profiles(spec, MEMORY, work, "float16")}
    # roofline + kernels x per-kernel cost: 2e9 / 121e12 + 40 x 6 us, and 1e9 / 300e9 + 3 x 6 us
    assert profiles["a"].time_s == pytest.approx(2e9 / 121e12 + 40 * 6e-6)
    assert profiles["b"].time_s == pytest.approx(1e9 / 300e9 + 3 * 6e-6)


def test_calibration_leaves_the_measured_kernels_fixed_cost_out() -> None:
    work = {key: UnitWork(w.flops, w.bytes_moved, kernels=10) for key, w in WORK.items()}
    here = HardwareProfile(
        devices=(dataclasses.replace(cpu("EPYC", 1e11), kernel_s=1e-3),), source="measured"
    )
    # each measured time is 10 kernels x 1 ms plus 2x (a) and 4x (b) the roofline: the factor is 3
    measured = [
        UnitProfile("a", "cpu", Phase.PREFILL, 0.01 + 2 * (2e9 / 1e11), 1000, 100, repeats=5),
        UnitProfile("b", "cpu", Phase.PREFILL, 0.01 + 4 * (1e9 / 1e10), 2000, 200, repeats=5),
    ]
    target = HardwareProfile(devices=(dataclasses.replace(cpu("Xeon", 4e11), kernel_s=2e-4),), source="spec")
    profiles = {p.unit: p for p in estimate_profiles(target, MEMORY, work, "float32", measured=measured,
                                                      measured_hardware=here)}  # fmt: skip
    assert profiles["a"].time_s == pytest.approx(3 * 2e9 / 4e11 + 10 * 2e-4)
    assert profiles["b"].time_s == pytest.approx(3 * 1e9 / 1e10 + 10 * 2e-4)
