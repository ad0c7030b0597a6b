"""Quantized checkpoints sized by transformers' own quantizer: bitsandbytes 4-bit and 8-bit for
real on this CPU, FP8 for a spec's GPUs, and a one-line refusal where the quantizer cannot be set
up here (GPTQ, AWQ)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from accelerate.utils import compute_module_sizes
from transformers import AutoModelForCausalLM

from profiler.flops import count_work
from profiler.layers import profile_units
from profiler.loading import load_with_map
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from tests.checkpoints import bnb_folder  # noqa: F401 - a fixture
from tests.checkpoints import llama_with
from tests.checkpoints import set_config
from tuner.core.domain import Phase
from tuner.core.domain import Quantization
from tuner.core.domain import Workload
from tuner.core.exceptions import ProfilingError

pytestmark = pytest.mark.usefixtures("one_thread")

WORKLOAD = Workload(seq=8, new_tokens=2, dtype="float32")
LAYER = "model.layers.0"


@pytest.mark.parametrize("bits", [4, 8])
def test_bitsandbytes_unit_bytes_are_what_the_loaded_model_holds(
    bits: int,
    bnb_folder: Callable[[int], Path],  # noqa: F811
) -> None:
    folder = bnb_folder(bits)
    meta = build_meta_model(resolve_source(str(folder)))
    graph = trace_graph(meta, WORKLOAD)
    assert graph.quantization == Quantization(
        f"bitsandbytes_{bits}bit", offload="whole-cpu", memory_share=0.9
    )
    loaded = AutoModelForCausalLM.from_pretrained(folder)  # as users load it: no dtype, no map
    sizes = compute_module_sizes(loaded)
    for unit in graph.units:
        assert unit.bytes == sizes[unit.name], unit.name
    footprint = loaded.get_memory_footprint()
    assert abs(graph.total_bytes - footprint) <= 0.05 * footprint
    # A decoder layer's linear weights take bits/8 bytes per element, not float32's 4
    unquantized = compute_module_sizes(meta.runnable)[LAYER]
    norms = 2 * 256 * 4
    assert graph.unit(LAYER).param_bytes - norms == (unquantized - norms) * bits // 32
    assert graph.unit(LAYER).loaded_bytes == graph.unit(LAYER).param_bytes  # streams as stored


def test_bitsandbytes_with_fp32_offload_refuses_every_offloaded_unit(
    bnb_folder: Callable[[int], Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    """With ``llm_int8_enable_fp32_cpu_offload`` transformers builds cpu and disk units
    unquantized, and this pre-quantized checkpoint's 4-bit tensors do not load into them."""
    folder = tmp_path / "offload"
    folder.mkdir()
    for file in bnb_folder(4).iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    settings = json.loads((folder / "config.json").read_text())["quantization_config"]
    set_config(folder, quantization_config={**settings, "llm_int8_enable_fp32_cpu_offload": True})
    meta = build_meta_model(resolve_source(str(folder)))
    assert meta.quantization is not None and meta.quantization.offload == "never"
    with pytest.raises(ProfilingError, match="ignore_mismatched_sizes|size"):
        load_with_map(str(folder), {"": "cpu"}, dtype=meta.dtype)


def test_a_quantized_model_is_timed_and_traced_through_its_unquantized_twin(
    bnb_folder: Callable[[int], Path],  # noqa: F811
) -> None:
    meta = build_meta_model(resolve_source(str(bnb_folder(4))))
    assert type(meta.model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert type(meta.runnable.model.layers[0].self_attn.q_proj).__name__ == "Linear"
    graph = trace_graph(meta, WORKLOAD)
    measured = profile_units(meta, graph, WORKLOAD, torch.device("cpu"), repeats=1, warmup=0)
    assert all(p.time_s > 0 for p in measured if p.unit == LAYER)
    # the roofline reads the weights at their stored 4-bit bytes
    work = count_work(meta, WORKLOAD)
    plain = compute_module_sizes(meta.runnable)[LAYER]
    assert work[(LAYER, Phase.DECODE)].bytes_moved < plain / 4


def fp8_config_folder(tmp_path: Path) -> Path:
    config = llama_with(hidden_size=256, intermediate_size=512, vocab_size=256)
    config.quantization_config = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "weight_block_size": [128, 128],
    }
    config.dtype = "bfloat16"
    config.save_pretrained(tmp_path)
    return tmp_path


def test_fp8_is_sized_at_one_byte_per_weight_for_a_spec_and_dequantized_here(tmp_path: Path) -> None:
    folder = fp8_config_folder(tmp_path)
    workload = Workload(seq=8, new_tokens=2, dtype="bfloat16")
    for_spec = build_meta_model(resolve_source(str(folder)), check_environment=False)
    graph = trace_graph(for_spec, workload)
    assert graph.quantization is not None and graph.quantization.method == "fp8"
    layer = for_spec.runnable.get_submodule(LAYER)
    linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    weights = sum(m.weight.numel() for m in linears)
    # one float8 byte per weight, one float32 scale per 128 x 128 block, norms in bfloat16
    scales = sum(4 * math.ceil(m.out_features / 128) * math.ceil(m.in_features / 128) for m in linears)
    norms = sum(p.numel() * 2 for name, p in layer.named_parameters() if "norm" in name)
    assert graph.unit(LAYER).param_bytes == weights + scales + norms
    assert graph.unit(LAYER).param_tensors == 2 * len(linears) + 2  # each weight with its scales
    assert count_work(for_spec, workload)[(LAYER, Phase.DECODE)].bytes_moved < 2 * weights
    # no GPU here: transformers' FP8 quantizer dequantizes to bfloat16, and so is it sized
    here = build_meta_model(resolve_source(str(folder)))
    assert trace_graph(here, workload).unit(LAYER).param_bytes == 2 * weights + norms


@pytest.mark.parametrize(
    ("settings", "needs"),
    [
        ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "optimum"),
        ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"}, "gptqmodel"),
    ],
)
def test_a_quantizer_that_cannot_be_set_up_here_is_refused_in_one_line(
    settings: dict[str, object], needs: str, tmp_path: Path
) -> None:
    config = llama_with()
    config.quantization_config = settings
    config.save_pretrained(tmp_path)
    for check in (True, False):
        refused = f"cannot size .*{settings['quant_method']} weights.*{needs}"
        with pytest.raises(ProfilingError, match=refused) as raised:
            build_meta_model(resolve_source(str(tmp_path)), check_environment=check)
        assert "\n" not in str(raised.value)
