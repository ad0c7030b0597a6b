"""Classes of interchangeable devices: the partition refinement agrees with the pairwise rule."""

from __future__ import annotations

from hypothesis import event
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tuner.core.domain import Device
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import ModelGraph
from tuner.core.domain import Phase
from tuner.core.domain import Unit
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload
from tuner.plan.costmodel import CostModel

GB = 10**9


@st.composite
def machines(draw: st.DrawFn) -> CostModel:
    """2-6 GPUs behind one switch, bridged in pairs, or linked at random (links drawn from a few,
    or missing), perhaps one of them unlike the others, so that classes of every shape occur."""
    k = draw(st.integers(2, 6))
    gpus = [str(g) for g in range(k)]
    units = (Unit("a", "L", GB, 0, calls=1, decode_calls=1), Unit("b", "L", GB, 0, calls=1, decode_calls=1))
    graph = ModelGraph("toy", "Toy", "float16", "toy", units, ())
    odd = draw(st.sampled_from([None, *gpus]))  # unlike the others in memory, speed or a link
    unlike = draw(st.sampled_from(["memory", "speed", "link"]))
    memory = {g: 80 * GB if g == odd and unlike == "memory" else 40 * GB for g in gpus}
    devices = [Device(g, "cuda", "gpu", memory[g], 40 * GB) for g in gpus]
    devices += [Device("cpu", "cpu", "host", 100 * GB, 100 * GB)]
    speeds = [None, (1e-5, 25e9), (5e-6, 300e9)]
    shape = draw(st.sampled_from(["one switch", "bridged pairs", "any"]))
    links = []
    for src in [*gpus, "cpu"]:
        for dst in [*gpus, "cpu"]:
            if src == dst:
                continue
            if shape == "any":
                figures = draw(st.sampled_from(speeds))
            elif "cpu" in (src, dst):
                figures = speeds[0] if odd in (src, dst) and unlike == "link" else speeds[1]
            elif shape == "bridged pairs":
                figures = speeds[2] if int(src) // 2 == int(dst) // 2 else speeds[1]
            else:
                figures = speeds[2]
            if figures is not None:
                links.append(Link(src, dst, *figures))
    seconds = {g: 0.02 if g == odd and unlike == "speed" else 0.01 for g in gpus}
    profiles = [
        UnitProfile(unit.name, g, phase, seconds[g], 0, 0) for g in gpus for unit in units for phase in Phase
    ]
    hardware = HardwareProfile(tuple(devices), tuple(links), "spec")
    return CostModel(graph, profiles, hardware, Workload(seq=8, new_tokens=2, dtype="float16"))


@settings(max_examples=300, deadline=None)
@given(machines())
def test_classes_are_the_pairwise_rule(model: CostModel) -> None:
    gpus = [key for key in model.compute_devices if key != "cpu"]
    classes = model.interchangeable_classes(gpus)
    assert sorted(key for members in classes for key in members) == sorted(gpus)
    home = {key: c for c, members in enumerate(classes) for key in members}
    for x in gpus:
        for y in gpus:
            assert (home[x] == home[y]) == model.interchangeable(x, y), (x, y)
    assert [members[0] for members in classes] == sorted((members[0] for members in classes), key=int)
    event(f"classes of sizes {sorted(len(members) for members in classes)}")
