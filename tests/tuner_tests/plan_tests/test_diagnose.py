"""Why nothing fits, in one line with figures: the lightest map the pins and exclusions allow,
and the device that is over its limit even then."""

from __future__ import annotations

import pytest

from tests.tuner_tests.plan_tests.test_exact import GB
from tests.tuner_tests.plan_tests.test_exact import MB
from tests.tuner_tests.plan_tests.test_exact import chain
from tuner.core.domain import DeviceMap
from tuner.core.domain import Quantization
from tuner.core.sizes import format_bytes
from tuner.core.sizes import parse_bytes
from tuner.plan.costmodel import CostModel
from tuner.plan.diagnose import why_nothing_fits
from tuner.plan.exact import solve


def test_a_gpu_too_small_for_one_layer_is_named_with_its_shortfall() -> None:
    model = chain(3, [300 * MB], cpu_limit=0, disk_limit=10 * GB)
    assert solve(model) is None
    why = why_nothing_fits(model, excluded=set())
    assert why.startswith("no device map fits: even with every unit it may shed on disk, device 0 needs ")
    assert f"more than its {format_bytes(300 * MB)}" in why


def test_with_disk_excluded_the_lightest_map_sheds_to_the_cpu() -> None:
    # two 400 MB layers shed to a 500 MB cpu: over, though on disk they would fit
    model = chain(3, [1 * GB], cpu_limit=500 * MB)
    assert solve(model, exclude={"disk"}) is None and solve(model) is not None
    why = why_nothing_fits(model, excluded={"disk"})
    # the two shed layers: 800 MB on a 500 MB cpu
    assert why.startswith(
        "no device map fits: even with every unit it may shed on cpu, device cpu needs "
        f"{format_bytes(300 * MB)} more than its {format_bytes(500 * MB)} "
    )


def test_pinned_units_stay_in_the_lightest_map() -> None:
    model = chain(3, [1 * GB], cpu_limit=500 * MB)
    pins = {"layer1": "cpu", "layer2": "cpu"}
    assert solve(model, pins=pins) is None
    why = why_nothing_fits(model, excluded=set(), pins=pins)
    assert f"device cpu needs {format_bytes(300 * MB)} more than its {format_bytes(500 * MB)}" in why


def test_excluding_every_device_that_computes_says_so() -> None:
    model = chain(2, [1 * GB])
    assert why_nothing_fits(model, excluded={"0", "cpu"}) == (
        "no device map fits: every device that computes is excluded (0, cpu)"
    )


def test_the_parts_named_add_up_to_what_the_device_needs() -> None:
    # the cpu holds the two shed 400 MB layers: their weights, most of what it needs, are named
    model = chain(3, [1 * GB], cpu_limit=500 * MB)
    why = why_nothing_fits(model, excluded={"disk"})
    lightest = DeviceMap((("layer0", "0"), ("layer1", "cpu"), ("layer2", "cpu")))
    cpu = next(m for m in model.predict(lightest).memory if m.device == "cpu")
    assert cpu.weights == 800 * MB and cpu.offloaded_buffers == 0
    assert cpu.total == cpu.weights + cpu.kv_cache + cpu.working_set + cpu.overhead
    assert why.endswith(
        f"(weights {format_bytes(cpu.weights)}, KV cache {format_bytes(cpu.kv_cache)}, "
        f"working set {format_bytes(cpu.working_set)}, runtime {format_bytes(cpu.overhead)})"
    )


def test_weights_that_outgrow_every_device_allowed_together_are_said_so() -> None:
    # three 400 MB layers on a 1 GB GPU and a 100 MB cpu, disk excluded: 100 MB short in all,
    # whatever the map; the lightest map alone names only the cpu's shortfall
    model = chain(3, [1 * GB], cpu_limit=100 * MB)
    why = why_nothing_fits(model, excluded={"disk"})
    assert why.endswith(
        f"; the weights alone ({format_bytes(1200 * MB)}) are {format_bytes(100 * MB)} more than the "
        f"devices allowed (0, cpu) hold in all ({format_bytes(1100 * MB)})"
    )
    assert "hold in all" not in why_nothing_fits(model, excluded=set())  # disk holds them


@pytest.mark.parametrize(
    "quantization", [None, Quantization("fp8", memory_share=0.9)], ids=["plain", "with-a-reserve"]
)
def test_a_device_capped_below_its_free_memory_is_given_the_limit_that_fits(
    quantization: Quantization | None,
) -> None:
    def capped(limit: int) -> CostModel:
        return chain(3, [1 * GB], cpu_limit=10 * GB, max_memory={"cpu": limit}, quantization=quantization)

    # the two shed layers need 800 MB and more of a cpu with 10 GB free, capped at 500 MB
    why = why_nothing_fits(capped(500 * MB), excluded={"disk"})
    assert why.startswith("no device map fits: even with every unit it may shed on cpu, device cpu needs ")
    suggested = why.rpartition("; max_memory cpu=")[2]
    assert suggested.endswith("MiB lets it fit")
    limit = parse_bytes(suggested.removesuffix(" lets it fit"))
    assert solve(capped(limit), exclude={"disk"}) is not None
    # a tenth of a MiB less would not: the figure is the smallest that --max-memory writes so
    assert solve(capped(limit - (1 << 20) // 10), exclude={"disk"}) is None


def test_no_limit_is_suggested_beyond_what_the_device_has() -> None:
    model = chain(3, [1 * GB], cpu_limit=500 * MB)  # the cpu's own memory is the limit
    assert "max_memory" not in why_nothing_fits(model, excluded={"disk"})
    capped = chain(3, [1 * GB], cpu_limit=600 * MB, max_memory={"cpu": 500 * MB})  # 600 MB is too few
    assert "max_memory" not in why_nothing_fits(capped, excluded={"disk"})


def test_hardware_without_a_disk_sheds_to_the_cpu() -> None:
    model = chain(3, [1 * GB], cpu_limit=500 * MB, disk_limit=None)
    assert solve(model) is None
    assert why_nothing_fits(model, excluded=set()).startswith(
        "no device map fits: even with every unit it may shed on cpu, device cpu needs "
    )
