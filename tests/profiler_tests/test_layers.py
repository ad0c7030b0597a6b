from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from profiler.layers import UnitEvent
from profiler.layers import profile_units
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from tuner.core.domain import DTYPE_BYTES
from tuner.core.domain import Phase
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload
from tuner.core.exceptions import WorkloadError

CPU = torch.device("cpu")


def measure(folder: Path, workload: Workload, **options: object) -> tuple[UnitProfile, ...]:
    meta = build_meta_model(resolve_source(str(folder)), workload.dtype)
    graph = trace_graph(meta, workload)
    return profile_units(meta, graph, workload, CPU, repeats=2, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("batch", [1, 3])
def test_kv_bytes_per_token_per_decoder_layer(
    config_folder: Callable[[str], Path], dtype: str, batch: int
) -> None:
    workload = Workload(batch=batch, seq=8, new_tokens=2, dtype=dtype)
    profiles = measure(config_folder("llama"), workload)
    kv_heads, head_dim = 2, 64 // 4
    expected = 2 * kv_heads * head_dim * DTYPE_BYTES[dtype] * batch
    layers = [p for p in profiles if p.unit.startswith("model.layers.") and p.phase is Phase.DECODE]
    assert len(layers) == 3
    assert all(p.kv_bytes_per_token == expected for p in layers)
    # The prompt fills the cache with seq tokens at once.
    prefill = [p for p in profiles if p.unit.startswith("model.layers.") and p.phase is Phase.PREFILL]
    assert all(p.cache_bytes == expected * 8 for p in prefill)
    others = [p for p in profiles if not p.unit.startswith("model.layers.")]
    assert all(p.kv_bytes_per_token == 0 for p in others)


def test_identical_layers_are_measured_once(config_folder: Callable[[str], Path]) -> None:
    events: list[UnitEvent] = []
    profiles = measure(config_folder("llama"), Workload(seq=8, new_tokens=1), on_unit=events.append)
    layers = {(p.unit, p.phase): p for p in profiles if p.unit.startswith("model.layers.")}
    for phase in Phase:
        assert layers[("model.layers.0", phase)].measured_as == "model.layers.0"
        assert layers[("model.layers.2", phase)].measured_as == "model.layers.0"
        assert layers[("model.layers.2", phase)].time_s == layers[("model.layers.0", phase)].time_s
    shared = [e for e in events if e.shared_with]
    assert {e.unit for e in shared} == {"model.layers.1", "model.layers.2"}


def test_full_measures_every_unit(config_folder: Callable[[str], Path]) -> None:
    profiles = measure(config_folder("llama"), Workload(seq=8, new_tokens=1), full=True)
    assert all(not p.shared for p in profiles)


def test_every_unit_that_runs_is_profiled_in_each_phase(
    family: str, config_folder: Callable[[str], Path]
) -> None:
    new_tokens = 0 if family == "bert" else 2
    workload = Workload(batch=2, seq=8, new_tokens=new_tokens)
    meta = build_meta_model(resolve_source(str(config_folder(family))), "float32")
    graph = trace_graph(meta, workload)
    profiles = profile_units(meta, graph, workload, CPU, repeats=1)
    got = {(p.unit, p.phase) for p in profiles}
    expected = {(u.name, Phase.PREFILL) for u in graph.units if u.calls}
    expected |= {(u.name, Phase.DECODE) for u in graph.units if u.decode_calls and new_tokens}
    assert got == expected
    for profile in profiles:
        assert profile.time_s > 0
        assert profile.device == "cpu"


@pytest.mark.parametrize("tied_family", ["gpt2", "bert"])
def test_profiling_leaves_the_meta_model_as_it_was(
    tied_family: str, config_folder: Callable[[str], Path]
) -> None:
    meta = build_meta_model(resolve_source(str(config_folder(tied_family))), "float32")
    workload = Workload(seq=8, new_tokens=0)
    graph = trace_graph(meta, workload)
    profile_units(meta, graph, workload, CPU, repeats=1)
    assert all(t.device.type == "meta" for t in [*meta.model.parameters(), *meta.model.buffers()])
    assert not any("forward" in vars(module) for module in meta.model.modules())
    # ties hold, so a second trace sees the same graph, and it can be profiled again
    assert trace_graph(meta, workload) == graph
    assert profile_units(meta, graph, workload, CPU, repeats=1)


def test_activation_peak_covers_the_output(config_folder: Callable[[str], Path]) -> None:
    profiles = measure(config_folder("llama"), Workload(batch=2, seq=16, new_tokens=0))
    head = next(p for p in profiles if p.unit == "lm_head")
    assert head.output_bytes == 2 * 16 * 128 * 4
    assert head.activation_peak_bytes >= head.output_bytes
    layer = next(p for p in profiles if p.unit == "model.layers.0")
    # q, k, v, attention scores and the MLP's intermediate are alive at some point
    assert layer.activation_peak_bytes > 2 * layer.output_bytes


def test_generation_on_an_encoder_is_refused(config_folder: Callable[[str], Path]) -> None:
    meta = build_meta_model(resolve_source(str(config_folder("bert"))), "float32")
    with pytest.raises(WorkloadError, match="does not generate"):
        trace_graph(meta, Workload(seq=8, new_tokens=4))


def test_prompt_longer_than_positions_is_refused(config_folder: Callable[[str], Path]) -> None:
    meta = build_meta_model(resolve_source(str(config_folder("gpt2"))), "float32")
    with pytest.raises(WorkloadError, match="positions"):
        trace_graph(meta, Workload(seq=250, new_tokens=10))


@pytest.mark.gpu
def test_cuda_profile_uses_events_and_allocator_peaks(config_folder: Callable[[str], Path]) -> None:
    workload = Workload(batch=2, seq=64, new_tokens=2)
    meta = build_meta_model(resolve_source(str(config_folder("llama"))), "float32")
    graph = trace_graph(meta, workload)
    profiles = profile_units(meta, graph, workload, torch.device("cuda:0"), repeats=3)
    assert {p.device for p in profiles} == {"0"}
    layer = next(p for p in profiles if p.unit == "model.layers.0" and p.phase is Phase.DECODE)
    assert layer.kv_bytes_per_token == 2 * 2 * 16 * 4 * 2
    assert all(p.activation_peak_bytes >= 0 and p.time_s > 0 for p in profiles)


def test_meta_pass_sizes_memory_like_the_real_pass(config_folder: Callable[[str], Path]) -> None:
    workload = Workload(batch=2, seq=16, new_tokens=2)
    meta = build_meta_model(resolve_source(str(config_folder("llama"))), "float32")
    graph = trace_graph(meta, workload)
    real = {(p.unit, p.phase): p for p in profile_units(meta, graph, workload, CPU, repeats=1)}
    sized = profile_units(meta, graph, workload, torch.device("meta"))
    assert {(p.unit, p.phase) for p in sized} == set(real)
    for profile in sized:
        twin = real[(profile.unit, profile.phase)]
        assert profile.time_s == 0 and profile.repeats == 0
        assert profile.output_bytes == twin.output_bytes
        assert profile.cache_bytes == twin.cache_bytes
        assert profile.kv_bytes_per_token == twin.kv_bytes_per_token
        # attention sized as the cpu's fused kernel allocates it: the output
        assert profile.activation_peak_bytes == twin.activation_peak_bytes, profile.unit
