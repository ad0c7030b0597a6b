from __future__ import annotations

import subprocess
import sys

import pytest

from profiler.roofline import calibration
from profiler.roofline import peak_flops
from profiler.roofline import roofline_seconds
from tuner.core.domain import Device

TB = 1e12


def gpu(peak: dict[str, float], bandwidth: float = 2 * TB) -> Device:
    return Device(
        "0", "cuda", "A100-SXM4-80GB", 80 << 30, 80 << 30, peak_flops=peak, memory_bandwidth=bandwidth
    )


A100 = gpu({"float32": 19.5 * TB, "bfloat16": 312 * TB, "float16": 312 * TB})


def test_compute_bound_by_hand() -> None:
    # 2 * 4096 tokens * 8192 * 8192 weights: 549.8 GFLOP over 134 MB of weights and activations
    flops = 2 * 4096 * 8192 * 8192
    nbytes = 8192 * 8192 * 2 + 2 * 4096 * 8192 * 2
    assert flops / nbytes > 312 / 2  # above the ridge point of 156 FLOP/byte
    assert roofline_seconds(flops, nbytes, A100, "bfloat16") == pytest.approx(flops / (312 * TB))


def test_memory_bound_by_hand() -> None:
    # One decode token through the same matrix: 134 MFLOP over 134 MB
    flops = 2 * 1 * 8192 * 8192
    nbytes = 8192 * 8192 * 2 + 2 * 8192 * 2
    assert roofline_seconds(flops, nbytes, A100, "bfloat16") == pytest.approx(nbytes / (2 * TB))


def test_ridge_point_is_where_both_roofs_meet() -> None:
    device = gpu({"float32": 10 * TB}, bandwidth=1 * TB)
    assert roofline_seconds(10 * TB, 1 * TB, device, "float32") == pytest.approx(1.0)
    assert roofline_seconds(20 * TB, 1 * TB, device, "float32") == pytest.approx(2.0)
    assert roofline_seconds(10 * TB, 3 * TB, device, "float32") == pytest.approx(3.0)
    assert roofline_seconds(0, 0, device, "float32") == 0.0


@pytest.mark.parametrize(("given", "asked"), [("bfloat16", "float16"), ("float16", "bfloat16")])
def test_half_precision_falls_back_to_its_twin(given: str, asked: str) -> None:
    device = gpu({"float32": 19.5 * TB, given: 312 * TB})
    assert peak_flops(device, asked) == 312 * TB
    assert roofline_seconds(312 * TB, 0, device, asked) == pytest.approx(1.0)


def test_own_figure_wins_over_the_twin() -> None:
    device = gpu({"float16": 330 * TB, "bfloat16": 165 * TB})
    assert peak_flops(device, "float16") == 330 * TB
    assert peak_flops(device, "bfloat16") == 165 * TB


def test_float32_never_falls_back() -> None:
    device = gpu({"bfloat16": 312 * TB})
    with pytest.raises(ValueError, match="no peak FLOP/s for float32.*bfloat16"):
        roofline_seconds(1.0, 1.0, device, "float32")


def test_missing_figures_raise() -> None:
    with pytest.raises(ValueError, match="no peak FLOP/s for bfloat16 \\(it has: none\\)"):
        roofline_seconds(1.0, 1.0, gpu({}), "bfloat16")
    with pytest.raises(ValueError, match="no peak FLOP/s"):
        roofline_seconds(1.0, 1.0, gpu({"float16": 0.0}), "bfloat16")
    with pytest.raises(ValueError, match="no memory bandwidth"):
        roofline_seconds(1.0, 1.0, gpu({"bfloat16": 312 * TB}, bandwidth=0.0), "bfloat16")
    with pytest.raises(ValueError, match="negative"):
        roofline_seconds(-1.0, 1.0, A100, "bfloat16")


def test_calibration_is_the_median_ratio() -> None:
    assert calibration([(2.0, 1.0), (3.0, 1.0), (10.0, 1.0)]) == 3.0
    # ratios 4, 2, 1.5, 3 -> median of an even count is the mean of the middle two
    assert calibration([(4e-3, 1e-3), (1e-3, 5e-4), (3.0, 2.0), (9.0, 3.0)]) == pytest.approx(2.5)
    # one outlier (a launch-bound tiny unit) does not move it
    assert calibration([(2.0, 1.0), (2.0, 1.0), (1000.0, 1.0)]) == 2.0
    assert calibration([(1.0, 1.0)]) == 1.0


def test_calibration_scales_an_unmeasured_device_of_the_same_kind() -> None:
    rooflines = [roofline_seconds(f, b, A100, "bfloat16") for f, b in [(1e12, 1e9), (1e9, 1e9), (5e13, 1e6)]]
    measured_on_a100 = [(3 * seconds, seconds) for seconds in rooflines]
    factor = calibration(measured_on_a100)
    h100 = gpu({"bfloat16": 989 * TB}, bandwidth=3.35 * TB)
    estimate = factor * roofline_seconds(1e9, 3.35e9, h100, "bfloat16")
    assert factor == pytest.approx(3.0)
    assert estimate == pytest.approx(3e-3)


def test_calibration_rejects_bad_pairs() -> None:
    with pytest.raises(ValueError, match="at least one"):
        calibration([])
    with pytest.raises(ValueError, match="positive"):
        calibration([(1.0, 0.0)])
    with pytest.raises(ValueError, match="negative"):
        calibration([(-1.0, 1.0)])


def test_roofline_module_imports_no_torch() -> None:
    code = "import sys, profiler.roofline; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
