"""Device maps loaded for real: same outputs as one device, measured latency and peak memory.

Tiny real models (tests/conftest.py) with safetensors weights; every map here stays on cpu and
disk, so the suite runs on a CPU-only machine. A map naming a GPU is a load failure here; on a
machine with CUDA the `gpu` tests load it for real.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import profiler.validate as validate_module
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from profiler.validate import TOLERANCES
from profiler.validate import Validation
from profiler.validate import measure_interleaved
from profiler.validate import validate
from tuner.core.domain import DeviceMap
from tuner.core.domain import ModelGraph
from tuner.core.domain import Workload
from tuner.core.exceptions import ModelSourceError
from tuner.core.exceptions import ProfilingError
from tuner.core.exceptions import WorkloadError

GENERATE = Workload(batch=1, seq=8, new_tokens=3)
FORWARD = Workload(batch=1, seq=8, new_tokens=0)
WORKLOADS = {"llama": GENERATE, "gpt2": GENERATE, "t5": GENERATE, "bert": FORWARD}

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU map loads on this machine")
needs_cuda = pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)


pytestmark = pytest.mark.usefixtures("one_thread")


def graph_of(folder: Path, workload: Workload) -> ModelGraph:
    return trace_graph(build_meta_model(resolve_source(str(folder)), workload.dtype), workload)


def placed(graph: ModelGraph, choose: Callable[[int, str], str]) -> DeviceMap:
    """A map from `choose(position, unit)`; units that share a weight follow the group's first."""
    places = {name: choose(i, name) for i, name in enumerate(graph.unit_names)}
    for group in graph.tied_groups:
        leader = min(group, key=graph.unit_names.index)
        for name in group:
            places[name] = places[leader]
    return DeviceMap(tuple(places.items()))


MAPS: dict[str, Callable[[int, str], str]] = {
    "alternate": lambda i, _: "disk" if i % 2 else "cpu",
    "all-disk": lambda i, _: "disk",
}


@pytest.mark.parametrize("kind", sorted(MAPS))
def test_cpu_and_disk_maps_give_the_reference_outputs(
    family: str, kind: str, weights_folder: Callable[[str], Path]
) -> None:
    folder = weights_folder(family)
    workload = WORKLOADS[family]
    graph = graph_of(folder, workload)
    dmap = placed(graph, MAPS[kind])
    assert "disk" in dmap.devices

    result = validate(str(folder), dmap, workload, repeats=1, warmup=1)

    assert result.ok, result.reason
    assert result.reason == ""
    atol, _ = TOLERANCES["float32"]
    assert result.max_abs_diff is not None and result.max_abs_diff <= atol
    assert result.latency_s is not None and result.latency_s > 0
    assert result.prefill_s is not None and 0 < result.prefill_s <= result.latency_s
    assert result.peak_memory["cpu"] > 0
    assert len(result.samples_s) == 1
    if workload.new_tokens > 0:
        assert result.tokens_equal is True
        assert result.decode_s is not None and result.decode_s > 0
    else:
        assert result.tokens_equal is None
        assert result.decode_s is None
        assert result.prefill_s == result.latency_s


@needs_no_cuda
def test_a_gpu_map_on_a_cpu_machine_is_a_load_failure(weights_folder: Callable[[str], Path]) -> None:
    folder = weights_folder("llama")
    graph = graph_of(folder, GENERATE)
    dmap = placed(graph, lambda i, _: "0" if i == 2 else "cpu")

    result = validate(str(folder), dmap, GENERATE, repeats=1)

    assert not result.ok
    assert result.reason.startswith("load failed: ")
    assert "\n" not in result.reason
    assert result.latency_s is None and result.peak_memory == {}


def test_an_incomplete_map_names_what_check_device_map_found_uncovered(
    weights_folder: Callable[[str], Path],
) -> None:
    folder = weights_folder("llama")
    graph = graph_of(folder, GENERATE)
    dmap = DeviceMap(tuple((name, "cpu") for name in graph.unit_names if name != "model.norm"))

    result = validate(str(folder), dmap, GENERATE)

    assert not result.ok
    assert result.reason.startswith("incomplete map: ")
    assert "does not give any device" in result.reason
    assert "model.norm.weight" in result.reason


def test_a_map_naming_an_unknown_module_is_refused(weights_folder: Callable[[str], Path]) -> None:
    folder = weights_folder("llama")
    graph = graph_of(folder, GENERATE)
    dmap = DeviceMap((*((name, "cpu") for name in graph.unit_names), ("model.layers.9", "cpu")))

    result = validate(str(folder), dmap, GENERATE)

    assert not result.ok
    assert "model.layers.9" in result.reason


def test_a_tied_weight_split_between_cpu_and_disk_fails_at_run_time_not_with_an_exception(
    weights_folder: Callable[[str], Path],
) -> None:
    # GPT-2's lm_head shares transformer.wte's weight; accelerate loads such a map and then
    # cannot find the offloaded copy when lm_head runs.
    folder = weights_folder("gpt2")
    graph = graph_of(folder, GENERATE)
    dmap = DeviceMap(tuple((name, "disk" if name == "lm_head" else "cpu") for name in graph.unit_names))

    result = validate(str(folder), dmap, GENERATE, repeats=1)

    assert not result.ok
    assert result.reason.startswith(("run failed: ", "load failed: "))
    assert "\n" not in result.reason


def test_peak_memory_counts_resident_weights_and_drops_when_they_live_on_disk(
    weights_folder: Callable[[str], Path],
) -> None:
    folder = weights_folder("llama")
    graph = graph_of(folder, GENERATE)
    on_cpu = validate(str(folder), placed(graph, lambda i, _: "cpu"), GENERATE, repeats=1, reference=False)
    on_disk = validate(str(folder), placed(graph, lambda i, _: "disk"), GENERATE, repeats=1, reference=False)

    assert on_cpu.ok and on_disk.ok
    assert on_cpu.max_abs_diff is None and on_cpu.tokens_equal is None  # not compared
    assert on_cpu.peak_memory["cpu"] >= graph.total_bytes
    # accelerate streams a disk unit in one leaf module at a time: the peak holds at least the
    # largest weight while it is used, and far less than the resident model
    meta = build_meta_model(resolve_source(str(folder)), "float32").model
    largest = max(p.numel() * p.element_size() for p in meta.parameters())
    assert largest < on_disk.peak_memory["cpu"] < on_cpu.peak_memory["cpu"] / 2


def test_bad_arguments_raise(
    weights_folder: Callable[[str], Path], config_folder: Callable[[str], Path]
) -> None:
    folder = weights_folder("llama")
    graph = graph_of(folder, GENERATE)
    dmap = placed(graph, lambda i, _: "cpu")
    with pytest.raises(ModelSourceError):
        validate(str(folder / "missing"), dmap, GENERATE)
    with pytest.raises(ModelSourceError, match="no weights"):
        validate(str(config_folder("llama")), dmap, GENERATE)
    with pytest.raises(ProfilingError, match="repeats"):
        validate(str(folder), dmap, GENERATE, repeats=0)
    bert = weights_folder("bert")
    with pytest.raises(WorkloadError):
        validate(str(bert), placed(graph_of(bert, FORWARD), lambda i, _: "cpu"), GENERATE)


def test_a_validation_has_a_reason_exactly_when_it_failed() -> None:
    with pytest.raises(ValueError):
        Validation(ok=True, reason="why")
    with pytest.raises(ValueError):
        Validation(ok=False)
    assert Validation.failed("load failed:\n  two lines").reason == "load failed: two lines"


def test_measure_interleaved_times_every_map_and_records_the_failing_ones(
    weights_folder: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = weights_folder("llama")
    graph = graph_of(folder, GENERATE)
    maps = {
        "cpu": placed(graph, lambda i, _: "cpu"),
        "alternate": placed(graph, MAPS["alternate"]),
        "incomplete": DeviceMap(tuple((name, "cpu") for name in graph.unit_names[1:])),
        "all-disk": placed(graph, MAPS["all-disk"]),
    }
    called: list[DeviceMap] = []
    timed_call = validate_module._Loaded.call

    def recording_call(self: validate_module._Loaded) -> object:
        called.append(self.dmap)
        return timed_call(self)

    monkeypatch.setattr(validate_module._Loaded, "call", recording_call)

    results = measure_interleaved(str(folder), maps, GENERATE, rounds=3, reference=True)

    assert list(results) == list(maps)
    assert not results["incomplete"].ok and "does not give any device" in results["incomplete"].reason
    for name in ("cpu", "alternate", "all-disk"):
        result = results[name]
        assert result.ok, result.reason
        assert result.latency_s is not None and result.latency_s > 0
        assert len(result.samples_s) == 3
        assert result.tokens_equal is True and result.max_abs_diff == pytest.approx(0.0, abs=1e-4)
    # one memory call per map at load, then rounds in rotating order
    names = {maps[name]: name for name in ("cpu", "alternate", "all-disk")}
    rounds = [names[dmap] for dmap in called[3:]]
    assert rounds == [
        *("cpu", "alternate", "all-disk"),
        *("alternate", "all-disk", "cpu"),
        *("all-disk", "cpu", "alternate"),
    ]


def test_measure_interleaved_reloads_maps_that_do_not_fit_side_by_side(
    weights_folder: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = weights_folder("bert")
    graph = graph_of(folder, FORWARD)
    maps = {"cpu": placed(graph, lambda i, _: "cpu"), "alternate": placed(graph, MAPS["alternate"])}
    loads: list[DeviceMap] = []
    load = validate_module._Subject.load

    def counting_load(self: validate_module._Subject, dmap: DeviceMap, folder: Path | None) -> object:
        loads.append(dmap)
        return load(self, dmap, folder)

    monkeypatch.setattr(validate_module, "_RESIDENT_SHARE", 0.0)
    monkeypatch.setattr(validate_module._Subject, "load", counting_load)

    results = measure_interleaved(str(folder), maps, FORWARD, rounds=2)

    assert all(result.ok for result in results.values())
    assert all(len(result.samples_s) == 2 for result in results.values())
    assert len(loads) == 2 + 2 * 2  # once to warm up and measure memory, then once per call


@needs_no_cuda
def test_measure_interleaved_records_a_map_that_cannot_load(weights_folder: Callable[[str], Path]) -> None:
    folder = weights_folder("t5")
    graph = graph_of(folder, GENERATE)
    maps = {"gpu": placed(graph, lambda i, _: "0"), "cpu": placed(graph, lambda i, _: "cpu")}

    results = measure_interleaved(str(folder), maps, GENERATE, rounds=2)

    assert results["gpu"].reason.startswith("load failed: ")
    assert results["cpu"].ok and len(results["cpu"].samples_s) == 2


@pytest.mark.gpu
@needs_cuda
def test_a_map_split_between_gpu_and_cpu_matches_the_reference(weights_folder: Callable[[str], Path]) -> None:
    folder = weights_folder("llama")
    graph = graph_of(folder, GENERATE)
    dmap = placed(graph, lambda i, _: "0" if i < 3 else ("cpu" if i % 2 else "disk"))

    result = validate(str(folder), dmap, GENERATE, repeats=2)

    assert result.ok, result.reason
    assert result.tokens_equal is True
    assert result.peak_memory["0"] > 0 and result.peak_memory["cpu"] > 0
    assert result.decode_s is not None and result.decode_s > 0


@pytest.mark.gpu
@needs_cuda
def test_a_map_larger_than_the_gpu_is_out_of_memory_not_an_exception(
    weights_folder: Callable[[str], Path],
) -> None:
    folder = weights_folder("llama")
    graph = graph_of(folder, Workload(seq=8))
    # The allocator refuses anything beyond what this process holds now and 1 MiB more. (A tensor
    # filling the free memory but 1 MiB cannot be had: the driver keeps more than that back.)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved(0) + (1 << 20)) / total, 0)
    try:
        on_gpu = placed(graph, lambda i, _: "0")
        result = validate(str(folder), on_gpu, Workload(batch=64, seq=256), repeats=1)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
    assert not result.ok
    assert result.reason.startswith(("out of memory on device 0", "load failed"))
