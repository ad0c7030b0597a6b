"""Mixture-of-experts models in every dtype, on the meta device and for real: expert weights
counted whole (an offloaded expert block streams whole), compute and weight reads priced with
the top-k experts that run, memory sized as the real grouped kernel allocates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from accelerate.utils import compute_module_sizes
from transformers import AutoModelForCausalLM

from profiler.flops import count_work
from profiler.layers import profile_units
from profiler.model import MetaModel
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from tests.checkpoints import MOE_CONFIGS
from tests.checkpoints import moe_folder  # noqa: F401 - a fixture
from tuner.core.domain import Phase
from tuner.core.domain import Workload

pytestmark = pytest.mark.usefixtures("one_thread")

DTYPES = ["float32", "float16", "bfloat16"]

#: The last decoder layer: a MoE layer in every family (DeepSeek-V3's first layer is dense here).
LAYER = "model.layers.1"


def meta_of(folder: Path, dtype: str) -> MetaModel:
    return build_meta_model(resolve_source(str(folder)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", sorted(MOE_CONFIGS))
def test_every_moe_family_traces_sizes_and_counts_on_meta_in_every_dtype(
    family: str,
    dtype: str,
    moe_folder: Callable[..., Path],  # noqa: F811
) -> None:
    meta = meta_of(moe_folder(family), dtype)
    workload = Workload(seq=16, new_tokens=2, dtype=dtype)
    graph = trace_graph(meta, workload)
    assert graph.dtype == dtype
    sizes = compute_module_sizes(meta.model)
    assert all(unit.bytes == sizes[unit.name] for unit in graph.units)  # expert weights included
    memory = profile_units(meta, graph, workload, torch.device("meta"))
    assert {p.phase for p in memory if p.unit == LAYER} == {Phase.PREFILL, Phase.DECODE}
    work = count_work(meta, workload)
    assert work[(LAYER, Phase.DECODE)].flops > 0


def test_meta_memory_of_a_moe_layer_is_what_the_real_grouped_kernels_allocate(
    moe_folder: Callable[..., Path],  # noqa: F811
) -> None:
    """The meta pass sizes ``torch._grouped_mm`` by its output; the cpu pass runs it (as
    from_pretrained's default experts path does): the activation peaks agree exactly."""
    for dtype in ("float32", "bfloat16"):
        meta = meta_of(moe_folder("mixtral"), dtype)
        workload = Workload(seq=64, new_tokens=2, dtype=dtype)
        graph = trace_graph(meta, workload)
        on_meta = {(p.unit, p.phase): p for p in profile_units(meta, graph, workload, torch.device("meta"))}
        on_cpu = profile_units(meta, graph, workload, torch.device("cpu"), repeats=1, warmup=0)
        for measured in on_cpu:
            sized = on_meta[(measured.unit, measured.phase)]
            assert sized.activation_peak_bytes == measured.activation_peak_bytes, (measured.unit, dtype)
            assert sized.cache_bytes == measured.cache_bytes
    # batched_mm, which runs on meta too, would gather a weight copy per (token, expert) pair
    config = MOE_CONFIGS["mixtral"]()
    gathered = 64 * 2 * 3 * config.hidden_size * config.intermediate_size * 2
    assert on_meta[(LAYER, Phase.PREFILL)].activation_peak_bytes < gathered / 10


def test_experts_count_whole_in_bytes_and_by_the_top_k_in_compute(
    moe_folder: Callable[..., Path],  # noqa: F811
) -> None:
    """Doubling the experts (top-2 of 4, then of 8) doubles the expert weights a layer holds and
    an offloaded layer streams, and leaves the FLOPs of a token alone."""
    config = MOE_CONFIGS["mixtral"]()
    hidden, inter = config.hidden_size, config.intermediate_size
    expert = 3 * hidden * inter * 4  # gate, up and down of one expert, float32
    workload = Workload(seq=16, new_tokens=2, dtype="float32")
    four, eight = (meta_of(moe_folder("mixtral", experts=e), "float32") for e in (4, 8))
    layer4, layer8 = (trace_graph(m, workload).unit(LAYER) for m in (four, eight))
    router = hidden * 4 * 4  # one router row per expert more
    assert layer8.param_bytes - layer4.param_bytes == 4 * expert + router
    assert layer8.loaded_bytes == layer8.param_bytes  # streamed whole, as accelerate's hook loads it

    work4, work8 = count_work(four, workload), count_work(eight, workload)
    for phase, tokens in ((Phase.PREFILL, 16), (Phase.DECODE, 1)):
        routed = work8[(LAYER, phase)].flops - work4[(LAYER, phase)].flops
        assert routed == 2 * tokens * hidden * 4  # the bigger router only
    # the experts of one decode token: top-2, each 2 * 3 * hidden * inter FLOPs
    attention_and_router = work4[(LAYER, Phase.DECODE)].flops - 2 * 6 * hidden * inter
    assert 0 < attention_and_router < 2 * 6 * hidden * inter

    # one decode token reads 2 of 8 experts' weights; the prompt's 32 (token, expert) pairs all 8
    non_experts = layer8.param_bytes - 8 * expert
    decode_weights = work8[(LAYER, Phase.DECODE)].bytes_moved - work4[(LAYER, Phase.DECODE)].bytes_moved
    assert decode_weights == router  # two experts either way
    prefill = work8[(LAYER, Phase.PREFILL)].bytes_moved - work4[(LAYER, Phase.PREFILL)].bytes_moved
    assert prefill == 4 * expert + router
    assert non_experts > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_moe_checkpoint_profiles_for_real_and_its_bytes_are_what_from_pretrained_loads(
    dtype: str,
    moe_folder: Callable[..., Path],  # noqa: F811
) -> None:
    folder = moe_folder("qwen2_moe", weights=True)
    meta = meta_of(folder, dtype)
    workload = Workload(seq=8, new_tokens=2, dtype=dtype)
    graph = trace_graph(meta, workload)
    measured = profile_units(meta, graph, workload, torch.device("cpu"), repeats=1, warmup=0)
    assert {p.unit for p in measured} >= {LAYER}
    assert all(p.time_s > 0 for p in measured if p.unit == LAYER)
    loaded = compute_module_sizes(AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)))
    assert all(unit.bytes == loaded[unit.name] for unit in graph.units)
