"""The terms that price what accelerate and eager PyTorch really do, each checked by hand:
streaming over the pageable host link, hooks, generate's per-step work, and decode at the
growing context."""

from __future__ import annotations

import dataclasses

import pytest

from tuner.core.domain import INPUT
from tuner.core.domain import Device
from tuner.core.domain import DeviceMap
from tuner.core.domain import Edge
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import ModelGraph
from tuner.core.domain import Phase
from tuner.core.domain import Unit
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload
from tuner.plan.costmodel import KV_PASSES
from tuner.plan.costmodel import CostModel
from tuner.plan.exact import brute_force
from tuner.plan.exact import solve

GiB = 1 << 30
MB = 10**6

PINNED = Link("cpu", "0", 10e-6, 10e9)
PAGEABLE = Link("cpu", "0", 50e-6, 5e9)


def machine(*, pageable: bool = True, hook_call_s: float = 0.0, step_s: float = 0.0, bandwidth: float = 0.0,
            second_gpu_speed: float = 1.0, forward_s: float = 0.0) -> HardwareProfile:  # fmt: skip
    """GPUs 0 and 1, a cpu and a disk; cpu <-> 0 pinned at 10 us + 10 GB/s, pageable at 50 us + 5 GB/s."""
    devices = (
        Device("0", "cuda", "gpu", 10 * GiB, 10 * GiB, memory_bandwidth=bandwidth),
        Device("1", "cuda", "gpu" if second_gpu_speed == 1.0 else "other", 10 * GiB, 10 * GiB,
               memory_bandwidth=bandwidth),
        Device("cpu", "cpu", "host", 64 * GiB, 60 * GiB),
        Device("disk", "disk", "/nvme", 1000 * GiB, 900 * GiB),
    )  # fmt: skip
    links = [
        PINNED,
        Link("0", "cpu", 10e-6, 10e9),
        Link("cpu", "1", 10e-6, 10e9),
        Link("1", "cpu", 10e-6, 10e9),
    ]
    links += [Link("0", "1", 5e-6, 100e9), Link("1", "0", 5e-6, 100e9), Link("disk", "cpu", 1e-3, 2e9)]
    return HardwareProfile(
        devices=devices,
        links=tuple(links),
        source="spec",
        pageable=(PAGEABLE, Link("0", "cpu", 50e-6, 5e9)) if pageable else (),
        generate_step_s=step_s,
        hook_call_s=hook_call_s,
        forward_call_s=forward_s,
    )


def model_of(hardware: HardwareProfile, *, new_tokens: int = 0, tensors: int = 4, hooks: int | None = 5,
             on_1: tuple[float, float] | None = None, file_tensors: int = 0) -> CostModel:  # fmt: skip
    """a (400 MB in `tensors` tensors, a KV cache of 1 MB per token) feeds b (200 MB, 2 tensors);
    `on_1`: their prefill seconds on GPU 1 where it differs from GPU 0."""
    graph = ModelGraph(
        model_name="toy",
        architecture="Toy",
        dtype="float16",
        fingerprint="toy",
        units=(
            Unit("a", "Layer", 400 * MB, 0, calls=1, decode_calls=1, param_tensors=tensors, hooks=hooks,
                 decode_hooks=hooks, file_tensors=file_tensors),
            Unit("b", "Layer", 200 * MB, 0, calls=1, decode_calls=1, param_tensors=2, hooks=hooks,
                 decode_hooks=hooks),
        ),
        edges=(Edge(INPUT, "a", 1000, 1000), Edge("a", "b", 1000, 1000)),
    )  # fmt: skip
    profiles = []
    for device in ("0", "1"):
        for phase, seconds in ((Phase.PREFILL, 0.010), (Phase.DECODE, 0.002)):
            kv = MB if phase is Phase.DECODE else 0
            a_seconds, b_seconds = (seconds, seconds / 2)
            if on_1 is not None and device == "1" and phase is Phase.PREFILL:
                a_seconds, b_seconds = on_1
            profiles.append(UnitProfile("a", device, phase, a_seconds, MB, 1000, kv_bytes_per_token=kv))
            profiles.append(UnitProfile("b", device, phase, b_seconds, MB, 1000))
    workload = Workload(batch=1, seq=30, new_tokens=new_tokens, dtype="float16")
    return CostModel(graph, profiles, hardware, workload)


def dmap(a: str, b: str) -> DeviceMap:
    return DeviceMap((("a", a), ("b", b)))


# ---- pageable vs pinned streaming ------------------------------------------------------------


def test_a_cpu_unit_streams_per_tensor_over_the_pageable_link() -> None:
    prefill = model_of(machine()).predict(dmap("cpu", "0")).prefill
    # 4 tensors x 50 us + 400 MB / 5 GB/s
    assert prefill.stream_s == pytest.approx(4 * 50e-6 + 400e6 / 5e9)


def test_without_a_pageable_figure_the_pinned_link_prices_the_copy() -> None:
    hardware = machine(pageable=False)
    assert "cpu->0" in hardware.pinned_only
    prefill = model_of(hardware).predict(dmap("cpu", "0")).prefill
    # 4 tensors x 10 us + 400 MB / 10 GB/s: half the pageable price
    assert prefill.stream_s == pytest.approx(4 * 10e-6 + 400e6 / 10e9)


def test_a_disk_unit_pays_the_read_then_the_pageable_copy() -> None:
    prefill = model_of(machine()).predict(dmap("disk", "0")).prefill
    read = 4 * 1e-3 + 400e6 / 2e9
    copy = 4 * 50e-6 + 400e6 / 5e9
    assert prefill.stream_s == pytest.approx(read + copy)


def test_a_disk_unit_parses_its_files_header_on_every_weight_read() -> None:
    hardware = dataclasses.replace(machine(), safetensors_entry_s=2e-6)
    plain = model_of(machine(), file_tensors=1800).predict(dmap("disk", "0")).prefill.stream_s
    priced = model_of(hardware, file_tensors=1800).predict(dmap("disk", "0")).prefill.stream_s
    # 4 weights read, each opening a file whose header lists 1800 tensors at 2 us each
    assert priced - plain == pytest.approx(4 * 1800 * 2e-6)
    # a cpu unit reads no file
    assert model_of(hardware, file_tensors=1800).predict(dmap("cpu", "0")).prefill.stream_s == pytest.approx(
        4 * 50e-6 + 400e6 / 5e9
    )


def test_alpha_is_paid_per_tensor_copied_not_per_unit() -> None:
    few = model_of(machine(), tensors=4).predict(dmap("cpu", "0")).prefill.stream_s
    many = model_of(machine(), tensors=40).predict(dmap("cpu", "0")).prefill.stream_s
    assert many - few == pytest.approx(36 * 50e-6)


def test_under_a_cpu_main_device_a_cpu_unit_streams_nothing() -> None:
    hardware = machine()
    cpu_only = dataclasses.replace(hardware, devices=tuple(d for d in hardware.devices if d.kind != "cuda"),
                                   links=(hardware.link("disk", "cpu"),), pageable=())  # fmt: skip
    graph, profiles = model_of(hardware).graph, []
    for phase, seconds in ((Phase.PREFILL, 0.010),):
        profiles += [UnitProfile(u, "cpu", phase, seconds, MB, 1000) for u in ("a", "b")]
    model = CostModel(graph, profiles, cpu_only, Workload(batch=1, seq=30, dtype="float16"))
    assert model.predict(dmap("cpu", "cpu")).prefill.stream_s == 0.0
    assert model.predict(dmap("disk", "cpu")).prefill.stream_s == pytest.approx(4 * 1e-3 + 400e6 / 2e9)


# ---- accelerate's hooks and generate's per-step work -------------------------------------------


def test_a_map_across_devices_pays_every_hooked_call() -> None:
    model = model_of(machine(hook_call_s=10e-6), new_tokens=5)
    split = model.predict(dmap("0", "1"))
    # the model's own hook, then 5 hooked module calls in each of the two units
    assert split.prefill.overhead_s == pytest.approx(10e-6 * (1 + 5 + 5))
    assert split.decode.overhead_s == pytest.approx(10e-6 * (1 + 5 + 5))
    assert model.predict(dmap("cpu", "0")).prefill.overhead_s == pytest.approx(10e-6 * 11)


def test_a_map_on_one_device_has_no_hooks() -> None:
    model = model_of(machine(hook_call_s=10e-6))
    assert model.predict(dmap("0", "0")).prefill.overhead_s == 0.0


def test_a_graph_traced_before_hooks_were_counted_pays_one_per_unit_call() -> None:
    model = model_of(machine(hook_call_s=10e-6), hooks=None)
    assert model.predict(dmap("0", "1")).prefill.overhead_s == pytest.approx(10e-6 * (1 + 1 + 1))


def test_generate_pays_its_own_work_once_per_decode_step() -> None:
    plain = model_of(machine(), new_tokens=5).predict(dmap("0", "0"))
    stepped = model_of(machine(step_s=200e-6), new_tokens=5).predict(dmap("0", "0"))
    assert stepped.decode.overhead_s == pytest.approx(200e-6)
    assert stepped.prefill.overhead_s == 0.0
    # 5 new tokens: the prefill yields the first, 4 decode steps the rest
    assert stepped.latency_s - plain.latency_s == pytest.approx(4 * 200e-6)


@pytest.mark.parametrize("placed", [("0", "0"), ("0", "1"), ("cpu", "0")])
def test_every_forward_pays_its_own_python_once_whatever_the_map(placed: tuple[str, str]) -> None:
    plain = model_of(machine(), new_tokens=5).predict(dmap(*placed))
    called = model_of(machine(forward_s=400e-6), new_tokens=5).predict(dmap(*placed))
    assert called.prefill.overhead_s - plain.prefill.overhead_s == pytest.approx(400e-6)
    assert called.decode.overhead_s - plain.decode.overhead_s == pytest.approx(400e-6)
    # the prefill and 4 decode steps: five forwards
    assert called.latency_s - plain.latency_s == pytest.approx(5 * 400e-6)


def test_hooks_can_make_one_device_the_optimum_and_the_solver_finds_it() -> None:
    # a runs 2 ms slower on GPU 1, b 1 ms faster: a on 0 and b on 1 beat either GPU alone by
    # 1 ms less a 5 us transfer without hooks, and lose once 11 hooked calls cost 100 us each
    for hook_call_s, expected in ((0.0, dmap("0", "1")), (100e-6, dmap("0", "0"))):
        model = model_of(machine(hook_call_s=hook_call_s, second_gpu_speed=2.0), on_1=(0.012, 0.004))
        found, truth = solve(model), brute_force(model)
        assert found is not None and truth is not None
        assert found.device_map == truth.device_map == expected
        assert found.prediction.latency_s == pytest.approx(truth.prediction.latency_s)


# ---- decode at the growing context --------------------------------------------------------------


def test_decode_reads_the_kv_cache_of_a_growing_context() -> None:
    new_tokens, bandwidth = 11, 1e12
    flat = model_of(machine(), new_tokens=new_tokens).predict(dmap("0", "0"))
    growing = model_of(machine(bandwidth=bandwidth), new_tokens=new_tokens).predict(dmap("0", "0"))
    # decode step j (1..10) holds seq + j tokens of a's cache, 1 MB each, and moves them three
    # times: attention reads them, DynamicCache's torch.cat reads them and writes them anew; the
    # profile timed step 1
    extra = sum(3 * (j - 1) * MB / bandwidth for j in range(1, new_tokens))
    assert growing.latency_s - flat.latency_s == pytest.approx(extra)
    assert extra == pytest.approx(135 * MB / bandwidth)  # 3 x (0 + 1 + ... + 9) MB
    assert KV_PASSES == 3
    assert growing.prefill == flat.prefill


def test_one_decode_step_reads_the_context_it_was_profiled_at() -> None:
    flat = model_of(machine(), new_tokens=2).predict(dmap("0", "0"))
    growing = model_of(machine(bandwidth=1e12), new_tokens=2).predict(dmap("0", "0"))
    assert growing.latency_s == flat.latency_s
