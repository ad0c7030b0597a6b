"""Buffers a checkpoint does not hold (non-persistent ones): accelerate's planner leaves them out of
its maps, ``from_pretrained`` places them anyway, and so do we; our own maps name them, and
validate and ``from_pretrained`` accept that. Tiny real models of tests/families.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from profiler.hardware import describe_hardware
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from profiler.validate import validate
from tests.families import save_family
from tuner.core.domain import Device
from tuner.core.domain import DeviceMap
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import Workload
from tuner.plan.baselines import STRATEGIES
from tuner.plan.baselines import accelerate_maps

pytestmark = pytest.mark.usefixtures("one_thread")

#: The buffer each family registers without saving it.
UNSAVED = {"openai_gpt": "transformer.position_ids", "gpt_bigcode": "transformer.bias"}


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


@pytest.mark.parametrize("family", sorted(UNSAVED))
def test_accelerates_maps_that_leave_a_buffer_out_place_it_where_from_pretrained_does(
    family: str, tmp_path: Path
) -> None:
    folder = save_family(family, tmp_path)
    meta = build_meta_model(resolve_source(str(folder)))
    weights = sum(p.numel() * p.element_size() for p in meta.model.parameters())
    # half the weights in RAM: accelerate's maps split the model, and name no entry for the buffer
    candidates = accelerate_maps(meta.model, meta.unit_names, cpu_and_disk(weights // 2))
    assert [c.name for c in candidates] == list(STRATEGIES)
    model_class = getattr(transformers, meta.architecture)
    whole = model_class.from_pretrained(folder).eval()
    ids = torch.arange(8).reshape(1, 8)
    for candidate in candidates:
        placed = candidate.device_map.to_hf()
        assert {"cpu", "disk"} <= set(placed.values())
        assert dict(candidate.device_map.placements)[UNSAVED[family]] == "cpu"  # never disk
        loaded = model_class.from_pretrained(folder, device_map=placed, offload_folder=tmp_path / "offload")
        assert str(loaded.transformer.get_buffer(UNSAVED[family].split(".")[-1]).device) == "cpu"
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=ids).logits, whole(input_ids=ids).logits)


def test_validate_accepts_a_map_that_places_an_unsaved_buffer_as_its_own_unit(tmp_path: Path) -> None:
    folder = save_family("gpt_bigcode", tmp_path)
    workload = Workload(seq=8, new_tokens=2)
    graph = trace_graph(build_meta_model(resolve_source(str(folder))), workload)
    assert "transformer.bias" in graph.unit_names
    places = {name: "disk" if ".h." in name else "cpu" for name in graph.unit_names}
    result = validate(str(folder), DeviceMap(tuple(places.items())), workload, repeats=1, warmup=0)
    assert result.ok and result.tokens_equal, result.reason


def test_validate_accepts_every_name_of_a_module_registered_twice(tmp_path: Path) -> None:
    # OpenAI-GPT's layers share one activation module: named_modules() lists it once
    folder = save_family("openai_gpt", tmp_path)
    workload = Workload(seq=8, new_tokens=2)
    graph = trace_graph(build_meta_model(resolve_source(str(folder))), workload)
    assert "transformer.h.1.mlp.act" in graph.unit_names
    places = {name: "disk" if name.startswith("transformer.h.1") else "cpu" for name in graph.unit_names}
    result = validate(str(folder), DeviceMap(tuple(places.items())), workload, repeats=1, warmup=0)
    assert result.ok and result.tokens_equal, result.reason
