"""A quantized checkpoint priced as its quantizer loads it: placements it refuses cannot be priced,
the exact optimum never uses them, and each device keeps the quantizer's memory reserve."""

from __future__ import annotations

import dataclasses

import pytest

from tests.tuner_tests.plan_tests.test_costmodel import MB
from tests.tuner_tests.plan_tests.test_costmodel import GiB
from tests.tuner_tests.plan_tests.test_costmodel import two_gpu_machine
from tests.tuner_tests.plan_tests.test_costmodel import two_unit_model
from tuner.core.codec import graph_from_dict
from tuner.core.codec import to_dict
from tuner.core.domain import DeviceMap
from tuner.core.domain import Quantization
from tuner.plan.costmodel import CostModel
from tuner.plan.exact import solve

BNB = Quantization("bitsandbytes_4bit", offload="whole-cpu", memory_share=0.9)


def quantized_model(quantization: Quantization, max_memory: dict[str, int] | None = None) -> CostModel:
    graph, profiles, workload = two_unit_model(new_tokens=4)
    graph = dataclasses.replace(graph, quantization=quantization)
    return CostModel(graph, profiles, two_gpu_machine(), workload, max_memory=max_memory)


def dmap(a: str, b: str) -> DeviceMap:
    return DeviceMap((("a", a), ("b", b)))


def test_the_quantizers_rule_decides_which_maps_can_be_priced() -> None:
    model = quantized_model(BNB)
    assert model.predict(dmap("0", "1")).feasible
    for refused in (dmap("0", "cpu"), dmap("0", "disk"), dmap("cpu", "disk")):
        with pytest.raises(ValueError, match="bitsandbytes_4bit refuses cpu or disk units"):
            model.predict(refused)
        assert model.refusal([place for _, place in refused.placements])
    assert model.refusal(["cpu", "cpu"]) == ""  # the whole model on cpu loads
    never = quantized_model(dataclasses.replace(BNB, offload="never"))
    assert "every unit must sit on a GPU" in never.refusal(["cpu", "cpu"])
    with pytest.raises(ValueError, match="every unit must sit on a GPU"):
        never.predict(dmap("0", "cpu"))
    allowed = quantized_model(Quantization("fp8"))
    assert allowed.refusal(["0", "disk"]) == ""
    assert allowed.predict(dmap("0", "disk")).latency_s > allowed.predict(dmap("0", "0")).latency_s


def test_the_reserve_of_adjust_max_memory_comes_off_every_limit_but_disk() -> None:
    limits = {"0": 1 * GiB, "1": 1 * GiB, "cpu": 2 * GiB}
    plain = CostModel(*two_unit_model(new_tokens=4)[:2], two_gpu_machine(), two_unit_model(4)[2], limits)
    reserved = quantized_model(BNB, limits)
    for device in ("0", "1", "cpu"):
        assert reserved.limit(device) == int(0.9 * plain.limit(device))
    assert reserved.limit("disk") == plain.limit("disk")
    memory = {m.device: m for m in reserved.predict(dmap("0", "0")).memory}
    assert memory["0"].limit == int(0.9 * GiB)


def test_a_map_that_fits_only_without_the_reserve_is_over_its_limit() -> None:
    # a's 400 MB + 4 MB buffers, KV and working set on GPU 0: fits 600 MB, not 90% of it
    unreserved = quantized_model(dataclasses.replace(BNB, memory_share=1.0), {"0": 600 * MB, "1": 600 * MB})
    reserved = quantized_model(BNB, {"0": 600 * MB, "1": 600 * MB})
    split = dmap("0", "1")
    assert unreserved.predict(split).feasible
    assert not reserved.predict(split).feasible


def test_the_exact_optimum_never_uses_a_refused_placement() -> None:
    """GPU 1 holds neither unit, GPU 0 not both: b must stream from the cpu, which fp8 allows and
    bitsandbytes refuses; with room for both on GPU 0 (after its reserve) bitsandbytes fits too."""
    limits = {"0": 770 * MB, "1": 50 * MB}
    allowed = solve(quantized_model(Quantization("fp8"), limits))
    assert allowed is not None and allowed.device_map == dmap("0", "cpu")
    refused = BNB.refused_placements(accelerators=True)
    assert refused == {"cpu", "disk"}
    assert solve(quantized_model(BNB, limits), exclude=refused) is None
    roomy = solve(quantized_model(BNB, {"0": 900 * MB, "1": 50 * MB}), exclude=refused)
    assert roomy is not None and roomy.device_map == dmap("0", "0")
    assert roomy.prediction.feasible


def test_the_quantization_is_stored_with_the_graph() -> None:
    graph = dataclasses.replace(two_unit_model()[0], quantization=BNB)
    assert graph_from_dict(to_dict(graph)) == graph
    older = to_dict(two_unit_model()[0])
    del older["quantization"]
    assert graph_from_dict(older).quantization is None


def test_a_quantization_checks_its_own_invariants() -> None:
    with pytest.raises(ValueError, match="offload must be one of allowed, whole-cpu, never"):
        Quantization("bitsandbytes_4bit", offload="sometimes")
    with pytest.raises(ValueError, match=r"memory share must be in \(0, 1\]"):
        Quantization("fp8", memory_share=1.5)
    with pytest.raises(ValueError, match="names its method"):
        Quantization("")
    assert BNB.refused_placements(accelerators=False) == {"disk"}
    assert Quantization("fp8").refused_placements(accelerators=True) == frozenset()
