"""accelerate's strategies come from accelerate's own planner and are priced by our cost model."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM
from transformers import Wav2Vec2ForCTC
from transformers.integrations.accelerate import _get_device_map

from profiler.hardware import describe_hardware
from profiler.layers import profile_units
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from tests.families import save_family
from tests.test_sweep import SEQ
from tests.test_sweep import _inputs
from tuner.core.domain import Device
from tuner.core.domain import DeviceMap
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import Workload
from tuner.core.sizes import parse_bytes
from tuner.plan.baselines import STRATEGIES
from tuner.plan.baselines import accelerate_maps
from tuner.plan.baselines import fitted_auto
from tuner.plan.baselines import single_device_maps
from tuner.plan.costmodel import CostModel


def cpu_and_disk(cpu_limit: int) -> HardwareProfile:
    cpu = describe_hardware().device("cpu")
    return HardwareProfile(
        devices=(
            Device("cpu", "cpu", cpu.name, cpu.total_memory, cpu_limit),
            Device("disk", "disk", "/tmp", 1 << 40, 1 << 40),
        ),
        links=(Link("disk", "cpu", 1e-3, 2e9),),
        source="spec",
    )


@pytest.mark.parametrize("strategy", ["auto", "sequential"])
@pytest.mark.parametrize("family_name", ["llama", "gpt2"])
def test_strategy_map_is_what_from_pretrained_plans(
    strategy: str, family_name: str, weights_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    folder = weights_folder(family_name)
    meta = build_meta_model(resolve_source(str(folder)), "float32")
    graph = trace_graph(meta, Workload(seq=8))
    cpu_limit = graph.total_bytes // 2  # half the model must go to disk
    ours = {
        c.name: c.device_map for c in accelerate_maps(meta.model, graph.unit_names, cpu_and_disk(cpu_limit))
    }
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, device_map=strategy, max_memory={"cpu": cpu_limit}, offload_folder=tmp_path
    )
    assert ours[strategy] == DeviceMap.from_hf(loaded.hf_device_map, graph.unit_names)
    assert "disk" in ours[strategy].devices


def test_strategies_for_spec_gpus_are_planned_without_gpus(config_folder: Callable[[str], Path]) -> None:
    meta = build_meta_model(resolve_source(str(config_folder("llama"))), "float32")
    graph = trace_graph(meta, Workload(seq=8))
    layer = graph.unit("model.layers.0").bytes
    gpus = tuple(Device(str(i), "cuda", "gpu", 1 << 30, 3 * layer) for i in range(2))
    hardware = HardwareProfile(devices=(*gpus, Device("cpu", "cpu", "host", 1 << 34, 1 << 34)), source="spec")
    candidates = accelerate_maps(meta.model, graph.unit_names, hardware)
    assert [c.name for c in candidates] == list(STRATEGIES)
    for candidate in candidates:
        assert set(dict(candidate.device_map.placements)) == set(graph.unit_names)
        assert {"0", "1"} & set(candidate.device_map.devices)


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


def test_planning_for_spec_gpus_too_small_for_offloaded_buffers_prints_nothing(
    config_folder: Callable[[str], Path],
) -> None:
    """transformers' planner warns that the offloaded units' buffers "seem not to fit any GPU",
    which our own pricing says, against its limits, in the table or the error."""
    meta = build_meta_model(resolve_source(str(config_folder("llama"))), "float32")
    graph = trace_graph(meta, Workload(seq=8))
    # one layer's bytes: the GPU is full, and the offloaded units' 64 B of buffers do not fit
    gpu = Device("0", "cuda", "gpu", 1 << 30, graph.unit("model.layers.0").bytes)
    hardware = HardwareProfile(devices=(gpu, Device("cpu", "cpu", "host", 1 << 34, 1 << 34)), source="spec")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()  # as users have it (the suite turns it down)
    kept = _Kept()
    libraries = [logging.getLogger(name) for name in ("transformers", "accelerate")]
    for library in libraries:
        library.addHandler(kept)
    try:
        candidates = accelerate_maps(meta.model, graph.unit_names, hardware)
    finally:
        transformers.logging.set_verbosity(verbosity)
        for library in libraries:
            library.removeHandler(kept)
    assert [c.name for c in candidates] == list(STRATEGIES)
    assert kept.lines == []


def test_every_family_is_priced(family: str, config_folder: Callable[[str], Path]) -> None:
    workload = Workload(batch=1, seq=8, new_tokens=0 if family == "bert" else 2)
    meta = build_meta_model(resolve_source(str(config_folder(family))), "float32")
    graph = trace_graph(meta, workload)
    profiles = profile_units(meta, graph, workload, torch.device("cpu"), repeats=1)
    hardware = cpu_and_disk(graph.total_bytes // 3)
    model = CostModel(graph, profiles, hardware, workload)
    candidates = [
        *accelerate_maps(meta.model, graph.unit_names, hardware),
        *single_device_maps(graph.unit_names, hardware),
    ]
    prices = {c.name: model.predict(c.device_map) for c in candidates}
    # accelerate offloads to disk: every forward streams those weights from disk
    assert prices["auto"].prefill.stream_s > 0
    assert prices["auto"].latency_s > prices["auto"].prefill.compute_s
    # everything on the cpu streams nothing but does not fit a third of the model
    assert prices["single:cpu"].prefill.stream_s == 0
    assert not prices["single:cpu"].feasible


def test_accelerates_maps_that_split_a_weight_normed_convolution_are_no_candidates(tmp_path: Path) -> None:
    """Under 30% of wav2vec2's bytes, accelerate places the weight-normed convolution's tensors
    apart and ``from_pretrained(device_map="auto")`` fails (weight norm needs both on one device):
    no strategy is priced as if it ran. (tests/test_sweep.py runs the tuner's own disk map of it.)"""
    folder = save_family("wav2vec2", tmp_path / "wav2vec2")
    meta = build_meta_model(resolve_source(str(folder)), "float32")
    graph = trace_graph(meta, Workload(seq=SEQ, new_tokens=0))
    assert "wav2vec2.encoder.pos_conv_embed.conv" in graph.unit_names
    cap = int(0.3 * graph.total_bytes)
    left_out: dict[str, str] = {}
    assert (
        accelerate_maps(meta.model, graph.unit_names, cpu_and_disk(cap), on_left_out=left_out.__setitem__)
        == []
    )
    assert set(left_out) == set(STRATEGIES)
    assert all(why.startswith("its map could not be loaded (ValueError") for why in left_out.values()), (
        left_out
    )
    with torch.no_grad(), pytest.raises(RuntimeError, match="same device"):  # loading, or running
        theirs = Wav2Vec2ForCTC.from_pretrained(
            folder, device_map="auto", max_memory={"cpu": cap}, offload_folder=tmp_path / "theirs"
        )
        theirs(**_inputs(folder, 0)["prefill"])


def test_a_strategy_whose_planner_fails_is_no_candidate_and_the_others_still_are(
    config_folder: Callable[[str], Path],
) -> None:
    """transformers' planner fails on a tied masked-LM head under some caps (IndexError in
    ``get_module_size_with_ties``), as ``from_pretrained(device_map="auto")`` does: that strategy
    is left out, saying why, and the others are planned."""
    meta = build_meta_model(resolve_source(str(config_folder("bert"))), "float32")
    graph = trace_graph(meta, Workload(seq=8, new_tokens=0))
    limits = {"cpu": int(0.54 * sum(p.numel() * 4 for p in meta.model.parameters()))}
    with pytest.raises(IndexError):
        _get_device_map(meta.model, "auto", dict(limits), None)

    planned = set()
    for strategy in STRATEGIES:
        with contextlib.suppress(IndexError):
            _get_device_map(meta.model, strategy, dict(limits), None)
            planned.add(strategy)

    left_out: dict[str, str] = {}
    candidates = accelerate_maps(
        meta.model, graph.unit_names, cpu_and_disk(limits["cpu"]), on_left_out=left_out.__setitem__
    )  # no error
    assert {c.name for c in candidates} == planned and "auto" not in planned
    assert set(left_out) == set(STRATEGIES) - planned
    assert all(why.startswith("transformers' planner failed (IndexError") for why in left_out.values())


def test_auto_over_its_limit_is_planned_again_under_the_limit_it_takes_to_fit(
    config_folder: Callable[[str], Path],
) -> None:
    workload = Workload(batch=1, seq=16, new_tokens=4)
    meta = build_meta_model(resolve_source(str(config_folder("llama"))), "float32")
    graph = trace_graph(meta, workload)
    profiles = profile_units(meta, graph, workload, torch.device("cpu"), repeats=1)
    # a cap that accelerate fills with weights nearly to the brim (at half, it keeps one layer)
    cap = graph.total_bytes * 7 // 10
    asked = {"cpu": cap}
    hardware = cpu_and_disk(cap)
    model = CostModel(graph, profiles, hardware, workload, asked)
    auto = next(c for c in accelerate_maps(meta.model, graph.unit_names, hardware, asked) if c.name == "auto")
    # accelerate fills the cpu with weights up to the cap; the KV cache and working set overrun it
    assert not model.predict(auto.device_map).feasible

    fitted = fitted_auto(meta.model, graph.unit_names, hardware, asked, model.predict)
    assert fitted is not None
    found = re.fullmatch(r"auto at cpu=(\d+\.\d(?:KiB|MiB))", fitted.name)
    assert found is not None, fitted.name
    lowered = parse_bytes(found[1])
    assert lowered < cap
    assert model.predict(fitted.device_map).feasible
    # the name is what to give from_pretrained(device_map="auto", max_memory=...) for this map
    replanned = accelerate_maps(meta.model, graph.unit_names, hardware, {"cpu": lowered})
    assert next(c for c in replanned if c.name == "auto").device_map == fitted.device_map

    # auto that fits as asked needs no lower limit
    roomy = {"cpu": graph.total_bytes * 4}
    fits = CostModel(graph, profiles, cpu_and_disk(roomy["cpu"]), workload, roomy)
    assert fitted_auto(meta.model, graph.unit_names, cpu_and_disk(roomy["cpu"]), roomy, fits.predict) is None


def test_auto_overrun_by_a_kv_cache_far_below_its_limit_is_planned_again_until_it_fits(
    config_folder: Callable[[str], Path],
) -> None:
    """The KV cache, not the weights, fills the cpu: a limit lowered by the overrun alone still
    holds every weight, so accelerate plans the same map again; below the weights it does not."""
    workload = Workload(batch=32, seq=200, new_tokens=4)
    meta = build_meta_model(resolve_source(str(config_folder("llama"))), "float32")
    graph = trace_graph(meta, workload)
    profiles = profile_units(meta, graph, workload, torch.device("cpu"), repeats=1)
    everything = DeviceMap(tuple((name, "cpu") for name in graph.unit_names))
    roomy = CostModel(graph, profiles, cpu_and_disk(1 << 40), workload)
    (cpu,) = (m for m in roomy.predict(everything).memory if m.device == "cpu")
    assert cpu.kv_cache > 4 * cpu.weights  # the cache is most of what the cpu holds
    cap = cpu.total - cpu.total // 100  # 1% short: accelerate, counting weights, places them all
    asked, hardware = {"cpu": cap}, cpu_and_disk(1 << 40)
    model = CostModel(graph, profiles, hardware, workload, asked)
    auto = next(c for c in accelerate_maps(meta.model, graph.unit_names, hardware, asked) if c.name == "auto")
    assert auto.device_map == everything and not model.predict(everything).feasible

    fitted = fitted_auto(meta.model, graph.unit_names, hardware, asked, model.predict)
    assert fitted is not None and model.predict(fitted.device_map).feasible
    assert fitted.name.startswith("auto at cpu=")
