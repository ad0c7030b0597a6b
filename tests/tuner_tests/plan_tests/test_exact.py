"""The exact solver against brute force on every small instance hypothesis draws, and by hand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import event
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tuner.core.domain import INPUT
from tuner.core.domain import Calibration
from tuner.core.domain import Device
from tuner.core.domain import Edge
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import ModelGraph
from tuner.core.domain import Phase
from tuner.core.domain import Quantization
from tuner.core.domain import Unit
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload
from tuner.plan.costmodel import CostModel
from tuner.plan.exact import Solution
from tuner.plan.exact import brute_force
from tuner.plan.exact import labels as labels_module
from tuner.plan.exact import solve
from tuner.plan.exact import solver as solver_module
from tuner.plan.exact.instance import _Instance
from tuner.plan.exact.labels import _Label
from tuner.plan.exact.labels import _pareto
from tuner.plan.exact.solver import _solve
from tuner.plan.exact.solver import unit_orders

MB = 10**6
GB = 10**9

Solver = Callable[..., "Solution | None"]
SOLVERS = [pytest.param(solve, id="solve"), pytest.param(brute_force, id="brute_force")]


@dataclass
class Case:
    """A model, a machine and a search question."""

    model: CostModel
    pins: dict[str, str] = field(default_factory=dict)
    exclude: set[str] = field(default_factory=set)
    in_order: bool = False


def build(
    units: list[Unit],
    edges: list[Edge],
    times: dict[str, list[tuple[float, float]]],
    memory: list[tuple[int, int, int]],
    gpu_limits: list[int],
    *,
    new_tokens: int = 0,
    overhead: int = 0,
    cpu_limit: int = 1000 * GB,
    disk_limit: int | None = 10_000 * GB,
    peer: bool = True,
    tied: tuple[tuple[str, ...], ...] = (),
    device_unit: str = "",
    max_memory: dict[str, int] | None = None,
    quantization: Quantization | None = None,
) -> CostModel:
    """A CostModel from plain lists: `times[device][u]` = (prefill s, decode s) on each device
    with profiles, `memory[u]` = (activation peak, prefill cache bytes, KV bytes per new token);
    `max_memory` caps devices below what they have free."""
    graph = ModelGraph(
        "toy",
        "Toy",
        "float16",
        "toy",
        tuple(units),
        tuple(edges),
        tied_groups=tied,
        device_unit=device_unit,
        quantization=quantization,
    )
    profiles = []
    for device, row in times.items():
        for unit, (prefill, decode), (activation, cache, kv) in zip(units, row, memory, strict=True):
            profiles += [
                UnitProfile(unit.name, device, Phase.PREFILL, prefill, activation, 0, cache_bytes=cache),
                UnitProfile(unit.name, device, Phase.DECODE, decode, activation, 0, kv_bytes_per_token=kv),
            ]
    gpus = [str(g) for g in range(len(gpu_limits))]
    devices = [
        Device(g, "cuda", "gpu", m, m, runtime_overhead=overhead)
        for g, m in zip(gpus, gpu_limits, strict=True)
    ]
    devices.append(Device("cpu", "cpu", "host", cpu_limit, cpu_limit))
    links = []
    if disk_limit is not None:  # None: a machine without one, as a spec may describe
        devices.append(Device("disk", "disk", "nvme", disk_limit, disk_limit))
        links.append(Link("disk", "cpu", 1e-3, 2 * GB))
    for g in gpus:
        links += [Link("cpu", g, 10e-6, 10 * GB), Link(g, "cpu", 10e-6, 10 * GB)]
        links += [Link(g, h, 5e-6, 100 * GB) for h in gpus if h != g and peer]
    hardware = HardwareProfile(tuple(devices), tuple(links), "spec")
    workload = Workload(seq=16, new_tokens=new_tokens, dtype="float16")
    return CostModel(graph, profiles, hardware, workload, max_memory)


def gpu_runs(placements: list[str]) -> list[str]:
    runs: list[str] = []
    for place in placements:
        if place.isdigit() and (not runs or runs[-1] != place):
            runs.append(place)
    return runs


def assert_in_class(case: Case, solution: Solution) -> None:
    placements = case.model.placements(solution.device_map)
    names = case.model.graph.unit_names
    assert not set(placements) & set(case.exclude)
    # one block per GPU, along execution order or the order with tied units side by side
    along = [[solution.device_map.placement(name) for name in order] for order in unit_orders(case.model)]
    blocks = [runs for runs in map(gpu_runs, along) if len(set(runs)) == len(runs)]
    assert blocks, placements
    if case.in_order:
        assert any(runs == sorted(runs, key=int) for runs in blocks)
    for unit, place in case.pins.items():
        assert placements[names.index(unit)] == place
    for group in case.model.graph.tied_groups:
        assert len({placements[names.index(unit)] for unit in group}) == 1


def record(solution: Solution) -> None:
    devices = set(solution.device_map.devices)
    event(f"GPUs used: {sum(d.isdigit() for d in devices)}")
    event(f"offloaded to: {'+'.join(sorted(devices & {'cpu', 'disk'})) or 'nothing'}")


# -- every small instance: solve == brute force ---------------------------------------------


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """2-6 units of random sizes and times, random edges (inputs, chains, long-range, backward),
    1-3 GPUs (sometimes identical), cpu and disk of random limits, pins, excludes, a tied pair;
    sometimes experts, whose decode peaks off the cpu's own path (`CostModel._decodes_off_cpu`);
    sometimes glue code that peaks before a unit's weights stream in, and weights cast as they
    are read from disk."""
    n = draw(st.integers(2, 6))
    k = draw(st.integers(1, 3 if n <= 5 else 2))
    names = [f"u{i}" for i in range(n)]
    small = st.integers(0, 400)
    experts = draw(st.booleans())
    units = [
        Unit(name, "Layer", draw(small) * MB, draw(st.integers(0, 20)) * MB,
             calls=draw(st.integers(0, 2)), decode_calls=draw(st.integers(0, 2)),
             experts_decode_peak_bytes=draw(st.integers(0, 80)) * MB if experts else None,
             glue_bytes=draw(st.integers(0, 200)) * MB if draw(st.booleans()) else None,
             disk_cast_bytes=draw(st.integers(0, 200)) * MB if draw(st.booleans()) else None)
        for name in names
    ]  # fmt: skip
    edges = []
    for i in range(n):
        if draw(st.booleans()):
            edges.append(Edge(INPUT, names[i], draw(small) * 1000, draw(small)))
        if i and draw(st.integers(0, 4)):
            edges.append(Edge(names[i - 1], names[i], draw(small) * 50_000, draw(small) * 1000))
    for _ in range(draw(st.integers(0, 3))):
        a, b = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        edges.append(Edge(names[a], names[b], draw(small) * 50_000, draw(small) * 1000))
    uniform = draw(st.booleans())  # identical GPUs exercise the symmetry reduction
    seconds = st.floats(0.0, 0.05, allow_nan=False)
    first = [(draw(seconds), draw(seconds)) for _ in range(n)]
    times = {str(g): first if uniform else [(draw(seconds), draw(seconds)) for _ in range(n)]
             for g in range(k)}  # fmt: skip
    if draw(st.booleans()):
        times["cpu"] = [(draw(seconds), draw(seconds)) for _ in range(n)]
    memory = [(draw(st.integers(0, 60)) * MB, draw(small) * 50_000, draw(small) * 5_000) for _ in range(n)]
    overhead = draw(st.sampled_from([0, 50 * MB]))
    need = sum(u.bytes for u in units) + 1
    largest = max(u.bytes for u in units) + 60 * MB

    def gpu_limit() -> int:  # about an even share of the model, and room to stream a unit in
        return overhead + int(draw(st.floats(0.4, 1.6)) * (need / k + largest))

    limit = gpu_limit()
    tied = ()
    if n >= 3 and draw(st.integers(0, 3)) == 0:
        tied = (tuple(sorted(draw(st.lists(st.sampled_from(names), min_size=2, max_size=2, unique=True)))),)
    model = build(
        units, edges, times, memory, [limit if uniform else gpu_limit() for _ in range(k)],
        new_tokens=draw(st.integers(0, 8)),
        overhead=overhead,
        cpu_limit=int(draw(st.floats(0.0, 1.5)) * need),
        disk_limit=int(draw(st.sampled_from([0.0, 0.5, 10.0])) * need),
        peer=draw(st.booleans()),
        tied=tied,
        device_unit=draw(st.sampled_from(names)) if experts else "",
    )  # fmt: skip
    places = [str(g) for g in range(k)] + ["cpu", "disk"]
    pins = {}
    if draw(st.integers(0, 3)) == 0:
        pins[draw(st.sampled_from(names))] = draw(st.sampled_from(places))
    exclude = set()
    if draw(st.integers(0, 2)) == 0:
        exclude = set(draw(st.lists(st.sampled_from(places), max_size=2)))
    return Case(model, pins, exclude, draw(st.booleans()))


def solved_as_brute_force(case: Case) -> Solution | None:
    """The solver's answer to `case`, checked against brute force's: both none, or equally fast."""
    options = dict(pins=case.pins, exclude=case.exclude, devices_in_order=case.in_order)
    expected = brute_force(case.model, **options)
    found = solve(case.model, **options)
    assert (found is None) == (expected is None)
    if found is None or expected is None:
        event("no map fits")
        return None
    record(found)
    assert found.prediction.latency_s == pytest.approx(expected.prediction.latency_s, rel=1e-9)
    return found


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_solve_agrees_with_brute_force(case: Case) -> None:
    found = solved_as_brute_force(case)
    if found is None:
        return
    priced = case.model.predict(found.device_map)
    assert priced.feasible
    assert priced.latency_s == found.prediction.latency_s
    assert_in_class(case, found)


@st.composite
def twin_cases(draw: st.DrawFn) -> Case:
    """2-4 units on 4-6 GPUs, most or all of them alike: more twins than an optimal map needs,
    which the solver leaves out (`_Instance.room_for`), where brute force tries every GPU."""
    n = draw(st.integers(2, 4))
    k = draw(st.integers(4, 6 if n <= 3 else 5))
    names = [f"u{i}" for i in range(n)]
    units = [
        Unit(name, "Layer", draw(st.integers(1, 400)) * MB, 0, calls=1, decode_calls=1) for name in names
    ]
    edges = [Edge(INPUT, names[0], 1000, 8)]
    edges += [Edge(names[i - 1], names[i], draw(st.integers(0, 400)) * 50_000, 1000) for i in range(1, n)]
    seconds = st.floats(0.0, 0.05, allow_nan=False)
    row = [(draw(seconds), draw(seconds)) for _ in range(n)]
    odd = draw(st.sampled_from([None, *range(k)]))  # one GPU unlike its twins, or none
    times = {
        str(g): [(draw(seconds), draw(seconds)) for _ in range(n)] if g == odd else row for g in range(k)
    }
    need = sum(u.bytes for u in units) + 1
    limit = int(draw(st.floats(0.3, 2.0)) * need) + max(u.bytes for u in units) + 20 * MB
    model = build(
        units, edges, times, [(10 * MB, 0, 0)] * n, [limit] * k,
        new_tokens=draw(st.integers(0, 4)),
        cpu_limit=int(draw(st.floats(0.0, 1.5)) * need),
        disk_limit=int(draw(st.sampled_from([0.0, 10.0])) * need),
    )  # fmt: skip
    pins = (
        {draw(st.sampled_from(names)): draw(st.sampled_from(["0", "2", "cpu"]))}
        if draw(st.booleans())
        else {}
    )
    return Case(model, pins, set(), draw(st.booleans()))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(twin_cases())
def test_twins_beyond_what_a_map_needs_are_left_out_exactly(case: Case) -> None:
    found = solved_as_brute_force(case)
    if found is None:
        return
    assert found.optimal
    assert_in_class(case, found)


def test_hundreds_of_twins_are_planned_as_the_few_a_map_can_use() -> None:
    """Each GPU holds two of the twelve layers: six twins can be used, never the other 294."""
    model = chain(12, [850 * MB] * 300, cpu_limit=0, disk_limit=0)
    assert len(_Instance(model, {}, frozenset(), in_order=False).room_for(0)) <= 2 * 12 + 1
    found = solve(model, time_limit=None)
    assert sorted(set(placements(found)), key=int) == ["0", "1", "2", "3", "4", "5"]


# -- larger models: the bounds never cut the optimum ----------------------------------------


@st.composite
def llama_cases(draw: st.DrawFn) -> Case:
    """Llama-shaped models (embedding, rotary, identical layers, norm, head, and the edges a trace
    records) too large to enumerate, on 1-4 GPUs of one or several speeds."""
    layers = draw(st.integers(4, 14))
    k = draw(st.integers(1, 4))
    size = draw(st.integers(50, 400)) * MB
    head = draw(st.integers(0, 600)) * MB
    names = ["embed", "rotary", *(f"layer{i}" for i in range(layers)), "norm", "head"]
    params = [head, 0, *([size] * layers), 1 * MB, head]
    units = [Unit(name, "L", p, MB if name == "rotary" else 0, calls=1, decode_calls=1)
             for name, p in zip(names, params, strict=True)]  # fmt: skip
    hidden = (draw(st.integers(1, 50)) * MB, draw(st.integers(1, 100)) * 1000)
    edges = [Edge(INPUT, "embed", 1000, 8), Edge("embed", "rotary", *hidden)]
    edges.append(Edge("embed", "layer0", *hidden))
    for i in range(layers):
        edges += [Edge("rotary", f"layer{i}", 100_000, 100), Edge(INPUT, f"layer{i}", 1000, 8)]
        if i:
            edges.append(Edge(f"layer{i - 1}", f"layer{i}", *hidden))
    edges += [Edge(f"layer{layers - 1}", "norm", *hidden), Edge("norm", "head", *hidden)]
    gpus = [str(g) for g in range(k)]
    uniform = draw(st.booleans())
    speed = [1.0 if uniform else draw(st.sampled_from([1.0, 1.5, 3.0])) for _ in gpus]

    def row(factor: float) -> list[tuple[float, float]]:
        return [(p / 1e11 * factor + 1e-4, p / 1e12 * factor + 1e-5) for p in params]

    times = {g: row(1 / s) for g, s in zip(gpus, speed, strict=True)}
    if draw(st.booleans()):
        times["cpu"] = row(20.0)
    ends = [(draw(st.integers(1, 40)) * MB, 0, 0)] * 2
    memory = ends + [(30 * MB, 5 * MB, 100_000)] * layers + [(10 * MB, 0, 0)] * 2
    total = sum(params) + layers * 6 * MB
    share = st.floats(0.4, 1.4)
    room = max(params) + 150 * MB  # the overhead and a streamed unit
    limit = int(draw(share) * total / k) + room
    model = build(
        units, edges, times, memory,
        [limit if uniform else int(draw(share) * total / k) + room for _ in gpus],
        new_tokens=draw(st.integers(0, 16)),
        overhead=50 * MB,
        cpu_limit=int(draw(st.sampled_from([0.1, 0.4, 2.0])) * total),
        disk_limit=int(draw(st.sampled_from([0.0, 0.3, 3.0])) * total),
        tied=(("embed", "head"),) if draw(st.integers(0, 3)) == 0 else (),
    )  # fmt: skip
    pins = {"head": draw(st.sampled_from(gpus + ["cpu"]))} if draw(st.integers(0, 4)) == 0 else {}
    exclude = {draw(st.sampled_from(gpus + ["cpu", "disk"]))} if draw(st.integers(0, 4)) == 0 else set()
    return Case(model, pins, exclude, draw(st.booleans()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(llama_cases())
def test_pruning_keeps_the_optimum_on_larger_models(case: Case) -> None:
    """The same dynamic programme cut by dominance alone is the yardstick for the bounds."""
    found = solve(case.model, pins=case.pins, exclude=case.exclude, devices_in_order=case.in_order)
    expected = _solve(case.model, case.pins, case.exclude, case.in_order, prune=False)
    assert (found is None) == (expected is None)
    if found is None or expected is None:
        event("no map fits")
        return
    record(found)
    assert found.prediction.latency_s == pytest.approx(expected.prediction.latency_s, rel=1e-9)
    assert_in_class(case, found)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(llama_cases(), st.integers(0, 60))
def test_a_search_stopped_at_any_point_answers_with_a_proven_bound(case: Case, checks: int) -> None:
    """The clock runs out after `checks` looks at it: the map found is in the class and fits, and
    the lower bound (the frontier's, or the root bounds') is never above the optimum."""
    options = dict(pins=case.pins, exclude=case.exclude, devices_in_order=case.in_order)
    optimum = solve(case.model, time_limit=None, **options)
    ticks = iter(range(checks))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(solver_module, "monotonic", lambda: 0.0)  # the deadline is at 1 s
        patch.setattr(labels_module, "monotonic", lambda: 0.0 if next(ticks, None) is not None else 2.0)
        found = solve(case.model, time_limit=1.0, **options)
    assert (found is None) == (optimum is None)
    if found is None or optimum is None:
        return
    event("stopped" if not found.optimal else "finished")
    assert found.prediction.feasible
    assert_in_class(case, found)
    assert found.latency_s >= optimum.latency_s * (1 - 1e-9)
    if found.lower_bound_s is None:
        assert found.latency_s == pytest.approx(optimum.latency_s, rel=1e-9)
    else:
        assert found.lower_bound_s <= optimum.latency_s * (1 + 1e-9)
        assert 0 <= found.gap == pytest.approx(1 - found.lower_bound_s / found.latency_s)


def test_a_time_limit_is_not_negative() -> None:
    with pytest.raises(ValueError, match="time_limit must be 0 or more seconds"):
        solve(chain(2, [1000 * MB]), time_limit=-1)


# -- by hand, for both solvers --------------------------------------------------------------


def chain(
    n: int, gpu_limits: list[int], *, tied: tuple[tuple[str, ...], ...] = (), **machine: Any
) -> CostModel:
    """`n` identical 400 MB layers in a chain, each fed by the inputs, 4 new tokens."""
    units = [Unit(f"layer{i}", "Layer", 400 * MB, 0, calls=1, decode_calls=1) for i in range(n)]
    edges = [Edge(INPUT, f"layer{i}", 1000, 8) for i in range(n)]
    edges += [Edge(f"layer{i}", f"layer{i + 1}", 8 * MB, 8000) for i in range(n - 1)]
    times = {str(g): [(0.010, 0.002)] * n for g in range(len(gpu_limits))}
    return build(units, edges, times, [(10 * MB, 0, 0)] * n, gpu_limits, new_tokens=4, tied=tied, **machine)


def placements(solution: Solution | None) -> list[str]:
    assert solution is not None
    assert solution.prediction.feasible
    return [place for _, place in solution.device_map.placements]


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_model_that_fits_only_split_across_two_gpus(solver: Solver) -> None:
    model = chain(4, [1000 * MB, 1000 * MB], cpu_limit=0, disk_limit=0)
    assert sorted(placements(solver(model))) == ["0", "0", "1", "1"]


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_model_that_needs_offload_streams_the_fewest_layers(solver: Solver) -> None:
    # four 400 MB layers, one 1300 MB GPU: a streamed layer's weights also sit in the GPU's
    # working set while it runs, so one offloaded layer frees nothing and two are needed
    assert sorted(placements(solver(chain(4, [1300 * MB], cpu_limit=10 * GB)))) == ["0", "0", "cpu", "cpu"]
    # with room for one layer on the cpu, the other is read from disk
    assert sorted(placements(solver(chain(4, [1300 * MB], cpu_limit=500 * MB)))) == ["0", "0", "cpu", "disk"]


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_pin_is_respected(solver: Solver) -> None:
    model = chain(3, [10 * GB, 10 * GB])
    assert placements(solver(model)) == ["0", "0", "0"]
    assert placements(solver(model, pins={"layer2": "1"})) == ["1", "1", "1"]  # the rest follows
    assert placements(solver(model, pins={"layer0": "disk"}))[0] == "disk"


@pytest.mark.parametrize("solver", SOLVERS)
def test_an_excluded_device_is_never_used(solver: Solver) -> None:
    # GPU 1 is twice as fast, so the free optimum lives there
    units = [Unit(f"layer{i}", "Layer", 400 * MB, 0, calls=1, decode_calls=1) for i in range(3)]
    times = {"0": [(0.02, 0.004)] * 3, "1": [(0.01, 0.002)] * 3, "cpu": [(0.5, 0.1)] * 3}
    model = build(units, [], times, [(0, 0, 0)] * 3, [10 * GB, 10 * GB], new_tokens=2)
    assert placements(solver(model)) == ["1", "1", "1"]
    assert placements(solver(model, exclude={"1"})) == ["0", "0", "0"]
    assert placements(solver(model, exclude={"0", "1"})) == ["cpu", "cpu", "cpu"]  # runs on the cpu
    for exclude in ({"1", "disk"}, {"cpu"}, {"0", "1", "cpu"}):
        solution = solver(model, exclude=exclude)
        assert solution is None or not exclude & set(solution.device_map.devices)
    assert solver(model, exclude={"0", "1", "cpu"}) is None  # nothing may run on the cpu


@pytest.mark.parametrize("solver", SOLVERS)
def test_no_map_fits_gives_none(solver: Solver) -> None:
    assert solver(chain(3, [500 * MB], cpu_limit=100 * MB, disk_limit=100 * MB)) is None
    assert solver(chain(2, [10 * GB]), pins={"layer0": "cpu"}, exclude={"cpu"}) is None


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_tied_pair_at_both_ends_shares_a_gpu_while_the_units_between_use_another(solver: Solver) -> None:
    # an embedding tied to the head, as accelerate places it: the only maps that fit put both
    # ends on one GPU and the middle on the other, which no GPU holds as one run in execution order
    model = chain(4, [1000 * MB, 1000 * MB], tied=(("layer0", "layer3"),), cpu_limit=0, disk_limit=0)
    assert unit_orders(model)[1] == ("layer0", "layer3", "layer1", "layer2")
    ends, middle = placements(solver(model))[::3], placements(solver(model))[1:3]
    assert len(set(ends)) == 1 and len(set(middle)) == 1 and ends[0] != middle[0]


@pytest.mark.parametrize("solver", SOLVERS)
def test_tied_units_share_a_placement(solver: Solver) -> None:
    free = placements(solver(chain(4, [1000 * MB, 1000 * MB])))
    assert free[0] != free[3]
    tied = placements(solver(chain(4, [1000 * MB, 1000 * MB], tied=(("layer0", "layer3"),))))
    assert tied[0] == tied[3]


@pytest.mark.parametrize("solver", SOLVERS)
def test_gpus_in_index_order_only_when_asked(solver: Solver) -> None:
    # the first two units are fast on GPU 1, the last two on GPU 0, and each GPU holds two
    units = [Unit(f"u{i}", "Layer", 400 * MB, 0, calls=1) for i in range(4)]
    times = {"0": [(0.05, 0.0)] * 2 + [(0.01, 0.0)] * 2, "1": [(0.01, 0.0)] * 2 + [(0.05, 0.0)] * 2}
    model = build(units, [Edge("u0", "u1", MB), Edge("u1", "u2", MB), Edge("u2", "u3", MB)], times,
                  [(0, 0, 0)] * 4, [900 * MB, 900 * MB], cpu_limit=0, disk_limit=0)  # fmt: skip
    assert placements(solver(model)) == ["1", "1", "0", "0"]
    assert placements(solver(model, devices_in_order=True)) == ["0", "0", "1", "1"]


def test_long_range_edges_are_priced_where_the_consumers_run() -> None:
    # u0 feeds every later unit a large tensor; splitting across GPUs pays it per consumer
    units = [Unit(f"u{i}", "Layer", 100 * MB, 0, calls=1) for i in range(4)]
    edges = [Edge("u0", f"u{i}", 500 * MB) for i in range(1, 4)]
    times = {"0": [(0.01, 0.0), (0.01, 0.0), (0.002, 0.0), (0.002, 0.0)], "1": [(0.002, 0.0)] * 4}
    model = build(units, edges, times, [(0, 0, 0)] * 4, [10 * GB, 10 * GB], peer=False)
    found, expected = solve(model), brute_force(model)
    assert found is not None and expected is not None
    assert found.prediction.latency_s == pytest.approx(expected.prediction.latency_s, rel=1e-12)


def test_experts_that_decode_on_the_cpus_own_path_are_solved_as_predict_prices_them() -> None:
    """generate decodes a mixture of experts on the cpu's own path when the map runs on the cpu
    with the device unit (the first parameter's) there, and gathers the chosen experts' weights
    (300 MB here) otherwise: the whole model on the cpu fits in 250 MB only on the cpu's path.
    Counting the gathered weights for every map, the solver found no map at all."""
    units = [
        Unit("embed", "Embedding", 100 * MB, 0, calls=1, decode_calls=1),
        Unit("moe", "Layer", 100 * MB, 0, calls=1, decode_calls=1, experts_decode_peak_bytes=300 * MB),
    ]
    edges = [Edge(INPUT, "embed", 1000, 8), Edge("embed", "moe", 1 * MB, 8000)]
    times = {"cpu": [(0.01, 0.001), (0.01, 0.001)]}
    model = build(
        units, edges, times, [(10 * MB, 0, 0)] * 2, [], new_tokens=4, cpu_limit=250 * MB, device_unit="embed"
    )
    expected = brute_force(model)
    assert expected is not None and set(expected.device_map.devices) == {"cpu"}
    found = solve(model)
    assert found is not None and found.device_map == expected.device_map and found.optimal
    # the device unit pinned off the cpu: experts gather, and nothing fits
    assert solve(model, pins={"embed": "disk"}) is None and brute_force(model, pins={"embed": "disk"}) is None


def test_bad_pins_are_refused() -> None:
    model = chain(2, [10 * GB])
    with pytest.raises(ValueError, match="unknown unit"):
        solve(model, pins={"nope": "0"})
    with pytest.raises(ValueError, match="not a device"):
        solve(model, pins={"layer0": "gpu"})


# -- the labels' Pareto sets ----------------------------------------------------------------


def label(latency: float, *resources: int, place: int = 0) -> _Label:
    main_sum, main_max, cpu_load, disk_load, block_sum, block_max = resources
    return _Label(latency, main_sum, main_max, cpu_load, disk_load, block_sum, block_max, None, place, 0.0)


def resources(label: _Label) -> tuple[int, ...]:
    return (label.main_sum, label.main_max, label.cpu_load, label.disk_load, label.block_sum, label.block_max)


def test_pareto_keeps_what_no_label_dominates() -> None:
    cheap = label(1.0, 5, 5, 0, 0, 0, 0)
    lean = label(2.0, 1, 1, 0, 0, 0, 0)
    worse = label(2.0, 5, 5, 0, 0, 0, 0)  # dominated by cheap
    untracked = label(3.0, -1, -1, 0, 0, 0, 0)  # -1 (can no longer overflow) beats every byte count
    twin = label(1.0, 5, 5, 0, 0, 0, 0, place=1)  # ties with cheap: only the first survives
    assert _pareto([worse, twin, untracked, lean, cheap]) == [twin, lean, untracked]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), *[st.integers(-1, 2)] * 6), max_size=12))
def test_pareto_matches_its_definition(rows: list[tuple[int, ...]]) -> None:
    labels = [label(float(row[0]), *row[1:], place=k) for k, row in enumerate(rows)]
    kept = _pareto(list(labels))

    def dominates(a: _Label, b: _Label) -> bool:
        return a.latency <= b.latency and all(x <= y for x, y in zip(resources(a), resources(b), strict=True))

    order = sorted(labels, key=lambda lab: (lab.latency, resources(lab)))  # stable, as _pareto sorts
    expected = [lab for k, lab in enumerate(order) if not any(dominates(other, lab) for other in order[:k])]
    assert kept == expected
    assert all(any(dominates(k, lab) for k in kept) for lab in labels)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.floats(0.1, 10.0), st.floats(0.1, 10.0))
def test_a_calibrated_model_is_solved_as_brute_force_prices_it(
    case: Case, prefill: float, decode: float
) -> None:
    # The factors weigh the phases against each other, so the optimum may move: the solver must
    # follow `predict`, which brute force ranks by.
    case.model.calibration = Calibration(prefill, decode, 1)
    options = dict(pins=case.pins, exclude=case.exclude, devices_in_order=case.in_order)
    expected = brute_force(case.model, **options)
    found = solve(case.model, **options)
    assert (found is None) == (expected is None)
    if found is not None and expected is not None:
        assert found.prediction.latency_s == pytest.approx(expected.prediction.latency_s, rel=1e-9)
        assert found.prediction.calibration == case.model.calibration
