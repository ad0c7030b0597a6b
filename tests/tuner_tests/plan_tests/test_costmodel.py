"""Every term of the cost model on instances small enough to price by hand."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

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
from tuner.plan.costmodel import CostModel

GiB = 1 << 30
MB = 10**6


def two_gpu_machine(peer: bool = True) -> HardwareProfile:
    devices = (
        Device("0", "cuda", "gpu", 10 * GiB, 10 * GiB, runtime_overhead=100 * MB),
        Device("1", "cuda", "gpu", 10 * GiB, 10 * GiB, runtime_overhead=100 * MB),
        Device("cpu", "cpu", "host", 64 * GiB, 60 * GiB),
        Device("disk", "disk", "/nvme", 1000 * GiB, 900 * GiB),
    )
    links = [
        Link("cpu", "0", 10e-6, 10e9),
        Link("0", "cpu", 10e-6, 10e9),
        Link("cpu", "1", 10e-6, 10e9),
        Link("1", "cpu", 10e-6, 10e9),
        Link("disk", "cpu", 1e-3, 2e9),
    ]
    if peer:
        links += [Link("0", "1", 5e-6, 100e9), Link("1", "0", 5e-6, 100e9)]
    return HardwareProfile(devices=devices, links=tuple(links), source="spec", host="test")


def two_unit_model(new_tokens: int = 0) -> tuple[ModelGraph, list[UnitProfile], Workload]:
    """a (400 MB weights + 4 MB buffers) feeds b (200 MB) with 8 MB in prefill, 1 MB per decode step."""
    graph = ModelGraph(
        model_name="toy",
        architecture="Toy",
        dtype="float16",
        fingerprint="toy",
        units=(
            Unit("a", "Layer", 400 * MB, 4 * MB, calls=1, decode_calls=1),
            Unit("b", "Layer", 200 * MB, 0, calls=1, decode_calls=1),
        ),
        edges=(Edge(INPUT, "a", 1 * MB, 1000), Edge("a", "b", 8 * MB, 1 * MB)),
    )
    profiles = []
    for device in ("0", "1"):
        for phase, seconds in ((Phase.PREFILL, 0.010), (Phase.DECODE, 0.002)):
            profiles.append(
                UnitProfile(
                    "a",
                    device,
                    phase,
                    seconds,
                    50 * MB,
                    8 * MB,
                    cache_bytes=(30 * MB if phase is Phase.PREFILL else 1 * MB),
                    kv_bytes_per_token=1 * MB if phase is Phase.DECODE else 0,
                )
            )
            profiles.append(UnitProfile("b", device, phase, seconds / 2, 20 * MB, 4 * MB))
    workload = Workload(batch=1, seq=30, new_tokens=new_tokens, dtype="float16")
    return graph, profiles, workload


def test_two_units_across_two_gpus_pay_one_peer_transfer() -> None:
    graph, profiles, workload = two_unit_model()
    model = CostModel(graph, profiles, two_gpu_machine(), workload)
    prediction = model.predict(DeviceMap((("a", "0"), ("b", "1"))))
    assert prediction.prefill.compute_s == pytest.approx(0.010 + 0.005)
    assert prediction.prefill.stream_s == 0
    # the input lives on the main device (0) with a; only a -> b crosses 0 -> 1
    assert prediction.prefill.transfer_s == pytest.approx(5e-6 + 8 * MB / 100e9)
    assert prediction.latency_s == pytest.approx(0.015 + 5e-6 + 8 * MB / 100e9)


def test_without_peer_access_gpu_to_gpu_goes_through_the_host() -> None:
    graph, profiles, workload = two_unit_model()
    model = CostModel(graph, profiles, two_gpu_machine(peer=False), workload)
    prediction = model.predict(DeviceMap((("a", "0"), ("b", "1"))))
    assert prediction.prefill.transfer_s == pytest.approx(2 * (10e-6 + 8 * MB / 10e9))


def test_cpu_offloaded_unit_streams_its_weights_on_every_decode_step() -> None:
    graph, profiles, workload = two_unit_model(new_tokens=10)
    model = CostModel(graph, profiles, two_gpu_machine(), workload)
    prediction = model.predict(DeviceMap((("a", "0"), ("b", "cpu"))))
    stream = 10e-6 + 200 * MB / 10e9  # b's parameters, cpu -> main (0), every forward
    assert prediction.decode.stream_s == pytest.approx(stream)
    assert prediction.decode.compute_s == pytest.approx(0.002 + 0.001)  # b executes on GPU 0
    assert prediction.decode.transfer_s == 0  # a and b both execute on 0
    # 10 new tokens: the prefill forward yields the first, then 9 decode steps
    assert prediction.latency_s == pytest.approx((0.015 + stream) + 9 * (0.003 + stream))


def test_disk_offload_reads_from_disk_then_copies_to_the_gpu() -> None:
    graph, profiles, workload = two_unit_model()
    model = CostModel(graph, profiles, two_gpu_machine(), workload)
    prediction = model.predict(DeviceMap((("a", "disk"), ("b", "0"))))
    assert prediction.prefill.stream_s == pytest.approx((1e-3 + 400 * MB / 2e9) + (10e-6 + 400 * MB / 10e9))


def test_streaming_pays_the_link_latency_once_per_parameter_tensor() -> None:
    graph, profiles, workload = two_unit_model()
    graph = dataclasses.replace(
        graph, units=(dataclasses.replace(graph.units[0], param_tensors=3), graph.units[1])
    )
    model = CostModel(graph, profiles, two_gpu_machine(), workload)
    prediction = model.predict(DeviceMap((("a", "disk"), ("b", "0"))))
    # accelerate's hook reads and copies a's three weights one by one
    assert prediction.prefill.stream_s == pytest.approx(
        (3 * 1e-3 + 400 * MB / 2e9) + (3 * 10e-6 + 400 * MB / 10e9)
    )


def test_disk_reads_come_from_the_page_cache_when_the_host_can_cache_the_model() -> None:
    graph, profiles, workload = two_unit_model()
    cached = dataclasses.replace(two_gpu_machine(), page_cache=Link("disk", "cpu", 50e-6, 20e9))
    model = CostModel(graph, profiles, cached, workload)
    prediction = model.predict(DeviceMap((("a", "disk"), ("b", "0"))))
    assert prediction.prefill.stream_s == pytest.approx((50e-6 + 400 * MB / 20e9) + (10e-6 + 400 * MB / 10e9))


def test_disk_reads_come_from_the_device_when_the_model_outgrows_free_ram() -> None:
    graph, profiles, workload = two_unit_model()
    machine = two_gpu_machine()
    small_host = tuple(
        dataclasses.replace(d, free_memory=500 * MB) if d.key == "cpu" else d for d in machine.devices
    )  # the model is 604 MB
    cached = dataclasses.replace(machine, devices=small_host, page_cache=Link("disk", "cpu", 50e-6, 20e9))
    model = CostModel(graph, profiles, cached, workload)
    prediction = model.predict(DeviceMap((("a", "disk"), ("b", "0"))))
    assert prediction.prefill.stream_s == pytest.approx((1e-3 + 400 * MB / 2e9) + (10e-6 + 400 * MB / 10e9))


def test_kv_cache_memory_for_batch_and_context() -> None:
    graph, profiles, workload = two_unit_model(new_tokens=10)
    model = CostModel(graph, profiles, two_gpu_machine(), workload)
    memory = {m.device: m for m in model.predict(DeviceMap((("a", "0"), ("b", "1")))).memory}
    # a's cache: 30 MB after the 30-token prompt + 1 MB per decode step (9 for 10 new tokens)
    assert memory["0"].kv_cache == 30 * MB + 9 * MB
    assert memory["1"].kv_cache == 0
    assert memory["0"].weights == 404 * MB
    # working set of a: activation peak + its inputs (the prompt ids, 1 MB)
    assert memory["0"].working_set == 50 * MB + 1 * MB
    assert memory["0"].total == 404 * MB + 39 * MB + 51 * MB + 100 * MB


def test_offloaded_buffers_stay_on_the_main_device() -> None:
    graph, profiles, workload = two_unit_model()
    model = CostModel(graph, profiles, two_gpu_machine(), workload)
    memory = {m.device: m for m in model.predict(DeviceMap((("a", "cpu"), ("b", "0")))).memory}
    assert memory["cpu"].weights == 400 * MB
    assert memory["0"].offloaded_buffers == 4 * MB
    # a's parameters are copied in while it runs on 0
    assert memory["0"].working_set == max(50 * MB + 1 * MB + 400 * MB, 20 * MB + 8 * MB)


def test_weights_cast_as_they_are_read_from_disk_hold_the_stored_copy_beside_them() -> None:
    """a's largest tensor is stored as 300 MB (float32 of a float16 model): the loader holds it
    beside a's weights while casting it, but only when a is read from disk."""
    graph, profiles, workload = two_unit_model()
    units = (replace(graph.units[0], disk_cast_bytes=300 * MB), graph.units[1])
    model = CostModel(replace(graph, units=units), profiles, two_gpu_machine(), workload)

    def working_set(place: str) -> int:
        memory = {m.device: m for m in model.predict(DeviceMap((("a", place), ("b", "0")))).memory}
        return memory["0"].working_set

    # inputs (1 MB) + weights (400 MB) + the stored copy (300 MB), more than the activation (50 MB)
    assert working_set("disk") == 1 * MB + 400 * MB + 300 * MB
    assert working_set("cpu") == 50 * MB + 1 * MB + 400 * MB  # held in the model's dtype: no cast
    assert model.streamed_working_set_bytes("disk") == (701 * MB, 20 * MB + 8 * MB + 200 * MB)


def test_feasibility_against_max_memory() -> None:
    graph, profiles, workload = two_unit_model()
    roomy = CostModel(graph, profiles, two_gpu_machine(), workload)
    tight = CostModel(graph, profiles, two_gpu_machine(), workload, max_memory={"0": 500 * MB})
    dmap = DeviceMap((("a", "0"), ("b", "0")))
    assert roomy.predict(dmap).feasible
    prediction = tight.predict(dmap)
    assert not prediction.feasible
    (short,) = prediction.shortfalls
    assert short.device == "0" and short.over_by == short.total - 500 * MB


def test_map_must_cover_the_model() -> None:
    graph, profiles, workload = two_unit_model()
    model = CostModel(graph, profiles, two_gpu_machine(), workload)
    with pytest.raises(ValueError, match="missing"):
        model.predict(DeviceMap((("a", "0"),)))


def test_max_memory_for_an_absent_device_is_refused() -> None:
    graph, profiles, workload = two_unit_model()
    with pytest.raises(ValueError, match="'3'"):
        CostModel(graph, profiles, two_gpu_machine(), workload, max_memory={"3": GiB})


def cpu_machine(page_cache: Link | None = None) -> HardwareProfile:
    devices = (
        Device("cpu", "cpu", "host", 64 * GiB, 60 * GiB),
        Device("disk", "disk", "/nvme", 1000 * GiB, 900 * GiB),
    )
    return HardwareProfile(
        devices, (Link("disk", "cpu", 1e-3, 2e9),), source="spec", host="test", page_cache=page_cache
    )


def embedding_and_tied_head() -> tuple[ModelGraph, list[UnitProfile], Workload]:
    """A 100 MB embedding table (lookup) whose weight the head uses too (tied, owned by embed)."""
    graph = ModelGraph(
        model_name="toy",
        architecture="Toy",
        dtype="float32",
        fingerprint="toy",
        units=(
            Unit("embed", "Embedding", 100 * MB, 0, calls=1, decode_calls=1, param_tensors=1, lookup=True),
            Unit("head", "Linear", 0, 0, calls=1, decode_calls=1, param_tensors=1, load_bytes=100 * MB),
        ),
        edges=(Edge(INPUT, "embed", 1000, 10), Edge("embed", "head", 2 * MB, 4000)),
        tied_groups=(("embed", "head"),),
    )
    profiles = []
    for phase, out in ((Phase.PREFILL, 2 * MB), (Phase.DECODE, 4000)):
        profiles.append(UnitProfile("embed", "cpu", phase, 0.001, out, out))
        profiles.append(UnitProfile("head", "cpu", phase, 0.010, 1 * MB, 1 * MB))
    return graph, profiles, Workload(batch=1, seq=500, new_tokens=3, dtype="float32")


def test_an_offloaded_embedding_reads_only_its_rows_and_a_tied_head_the_whole_table() -> None:
    graph, profiles, workload = embedding_and_tied_head()
    model = CostModel(graph, profiles, cpu_machine(), workload)
    prediction = model.predict(DeviceMap((("embed", "disk"), ("head", "disk"))))
    head = 1e-3 + 100 * MB / 2e9  # the head's hook maps the whole tied weight, param_bytes or not
    assert prediction.prefill.stream_s == pytest.approx((1e-3 + 2 * MB / 2e9) + head)
    assert prediction.decode.stream_s == pytest.approx((1e-3 + 4000 / 2e9) + head)


def test_copying_an_embedding_to_a_gpu_moves_the_whole_table() -> None:
    graph, profiles, workload = embedding_and_tied_head()
    untied = dataclasses.replace(graph, tied_groups=())  # so that the head may sit on the GPU alone
    gpu_profiles = [dataclasses.replace(p, device="0") for p in profiles]
    model = CostModel(untied, gpu_profiles, two_gpu_machine(), workload)
    prediction = model.predict(DeviceMap((("embed", "cpu"), ("head", "0"))))
    assert prediction.decode.stream_s == pytest.approx(10e-6 + 100 * MB / 10e9)


def test_streaming_over_a_missing_link_names_it() -> None:
    graph, profiles, workload = two_unit_model()
    machine = two_gpu_machine()
    no_disk_link = dataclasses.replace(machine, links=tuple(x for x in machine.links if x.src != "disk"))
    model = CostModel(graph, profiles, no_disk_link, workload)
    assert model.predict(DeviceMap((("a", "cpu"), ("b", "0")))).prefill.stream_s > 0  # cpu -> 0 exists
    with pytest.raises(ValueError, match="no link disk -> cpu"):
        model.predict(DeviceMap((("a", "disk"), ("b", "0"))))
