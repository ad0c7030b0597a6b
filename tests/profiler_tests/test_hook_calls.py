"""The hooked module calls a traced graph counts are the calls accelerate's hooks really get."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from accelerate import dispatch_model
from torch import nn

from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from tests.conftest import TINY_CONFIGS
from tests.conftest import model_class
from tuner.core.domain import Phase
from tuner.core.domain import Workload


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
def test_traced_hook_calls_match_accelerates_hooks_in_generate(
    family: str, config_folder: Callable[[str], Path]
) -> None:
    graph = trace_graph(
        build_meta_model(resolve_source(str(config_folder(family))), "float32"),
        Workload(batch=1, seq=8, new_tokens=2),
    )
    config = TINY_CONFIGS[family]()
    torch.manual_seed(0)
    model = model_class(config)(config).eval()
    # every unit its own entry: the hooks a map spanning devices gets, on one device here
    dispatch_model(model, {unit.name: "cpu" for unit in graph.units}, force_hooks=True)
    calls = [0]

    def count(module: nn.Module, args: object) -> None:
        calls[0] += 1

    for module in model.modules():
        if hasattr(module, "_hf_hook"):
            module.register_forward_pre_hook(count)
    with torch.no_grad():  # a prefill and one decode step, the model's own hook in each
        model.generate(torch.randint(0, 100, (1, 8)), max_new_tokens=2, min_new_tokens=2, do_sample=False)
    traced = sum(1 + sum(unit.hook_calls(phase) for unit in graph.units) for phase in Phase)
    assert calls[0] == traced
    assert all(unit.hooks is not None for unit in graph.units)


def test_each_unit_knows_how_many_tensors_its_checkpoint_file_lists(
    weights_folder: Callable[[str], Path], config_folder: Callable[[str], Path]
) -> None:
    from safetensors import safe_open

    folder = weights_folder("llama")
    (checkpoint,) = folder.glob("*.safetensors")
    with safe_open(str(checkpoint), framework="pt") as opened:
        listed = len(list(opened.keys()))
    graph = trace_graph(build_meta_model(resolve_source(str(folder)), "float32"), Workload(batch=1, seq=8))
    assert {unit.file_tensors for unit in graph.units if unit.param_tensors} == {listed}
    without = trace_graph(
        build_meta_model(resolve_source(str(config_folder("llama"))), "float32"), Workload(batch=1, seq=8)
    )
    assert {unit.file_tensors for unit in without.units} == {0}
