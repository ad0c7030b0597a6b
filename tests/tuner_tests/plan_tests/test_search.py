"""The Optuna search: constraints, seeds, pins, ties, resume, determinism, and the optimum found
without seeds on small instances (checked against brute force) and on a tiny real Llama."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch

from profiler.estimate import estimate_profiles
from profiler.flops import count_work
from profiler.layers import profile_units
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from profiler.spec import load_spec
from tuner.core.domain import INPUT
from tuner.core.domain import OFFLOAD
from tuner.core.domain import Candidate
from tuner.core.domain import Device
from tuner.core.domain import DeviceMap
from tuner.core.domain import Edge
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import ModelGraph
from tuner.core.domain import Phase
from tuner.core.domain import Unit
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload
from tuner.plan.baselines import accelerate_maps
from tuner.plan.costmodel import CostModel
from tuner.plan.exact import brute_force
from tuner.plan.exact import solve
from tuner.plan.search import search

MB = 10**6
GB = 10**9


def toy(
    gpu_limits: tuple[int, ...] = (2 * GB, 1 * GB),
    slowdown: tuple[float, ...] = (1.0, 1.5),
    *,
    layers: int = 4,
    cpu_limit: int = 100 * GB,
    tied: bool = False,
    rotary: bool = False,
    new_tokens: int = 4,
    gpu_links: bool = True,
) -> CostModel:
    """embed (300 MB), `layers` layers (400 MB), head (300 MB, tied to embed if asked): GPUs of
    the given limits and speeds, a cpu 20x slower than GPU 0, disk."""
    names = ["embed", *(["rotary"] if rotary else []), *(f"layer{i}" for i in range(layers)), "head"]
    units = []
    for name in names:
        params = (
            0
            if name == "rotary" or (tied and name == "head")
            else 300 * MB
            if name in ("embed", "head")
            else 400 * MB
        )
        units.append(
            Unit(
                name,
                "Layer" if name.startswith("layer") else name.title(),
                params,
                0,
                calls=1,
                decode_calls=1,
            )
        )
    edges = [Edge(INPUT, "embed", 4000, 8)]
    body = [n for n in names if n != "rotary"]
    edges += [Edge(a, b, 8 * MB, 64_000) for a, b in itertools.pairwise(body)]
    if rotary:
        edges += [Edge("rotary", n, 2 * MB, 16_000) for n in names if n.startswith("layer")]
    graph = ModelGraph("toy", "Toy", "float16", "toy", tuple(units), tuple(edges),
                       tied_groups=(("embed", "head"),) if tied else ())  # fmt: skip
    gpus = [str(g) for g in range(len(gpu_limits))]
    profiles = []
    for device, factor in [*zip(gpus, slowdown, strict=True), ("cpu", 20.0)]:
        for unit in units:
            base = 0.010 if unit.module_class == "Layer" else 0.002
            cache = 20 * MB if unit.module_class == "Layer" else 0
            kv = 1 * MB if unit.module_class == "Layer" else 0
            profiles.append(
                UnitProfile(
                    unit.name, device, Phase.PREFILL, base * factor, 30 * MB, 8 * MB, cache_bytes=cache
                )
            )
            profiles.append(UnitProfile(unit.name, device, Phase.DECODE, base * factor / 10, 30 * MB, 64_000,
                                        kv_bytes_per_token=kv))  # fmt: skip
    devices = [
        Device(g, "cuda", "gpu", limit, limit, runtime_overhead=50 * MB)
        for g, limit in zip(gpus, gpu_limits, strict=True)
    ]
    devices += [
        Device("cpu", "cpu", "host", cpu_limit, cpu_limit),
        Device("disk", "disk", "nvme", 100 * GB, 100 * GB),
    ]
    links = [Link("disk", "cpu", 1e-4, 2 * GB)]
    for g in gpus[: None if gpu_links else 1]:
        links += [Link("cpu", g, 1e-5, 20 * GB), Link(g, "cpu", 1e-5, 20 * GB)]
    hardware = HardwareProfile(tuple(devices), tuple(links), "spec")
    return CostModel(graph, profiles, hardware, Workload(seq=32, new_tokens=new_tokens, dtype="float16"))


def maps(result_candidates: tuple[Candidate, ...]) -> list[dict[str, str]]:
    return [dict(c.device_map.placements) for c in result_candidates]


def latency(candidate: Candidate | None) -> float:
    """The predicted latency of a priced candidate."""
    assert candidate is not None and candidate.prediction is not None
    return candidate.prediction.latency_s


def in_class(model: CostModel, dmap: DeviceMap) -> bool:
    """Each GPU holds one contiguous run of the units that are not offloaded."""
    runs: list[str] = []
    for place in model.placements(dmap):
        if place not in OFFLOAD and (not runs or runs[-1] != place):
            runs.append(place)
    return len(runs) == len(set(runs))


def study_trials(storage: optuna.storages.BaseStorage, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).trials


# -- constraints and seeds ------------------------------------------------------------------


def test_a_map_that_does_not_fit_is_a_complete_trial_with_a_positive_constraint() -> None:
    model = toy()
    everything_on_0 = DeviceMap(tuple((name, "0") for name in model.graph.unit_names))
    assert not model.predict(everything_on_0).feasible
    storage = optuna.storages.InMemoryStorage()
    result = search(model, storage=storage, study_name="s", trials=1, seeds=[everything_on_0])
    (trial,) = study_trials(storage, "s")
    assert trial.state is optuna.trial.TrialState.COMPLETE
    over_by = {memory.device: memory.over_by for memory in model.predict(everything_on_0).memory}
    assert trial.constraints["0"] > 0 and trial.constraints == pytest.approx(over_by)
    assert trial.value == pytest.approx(model.predict(everything_on_0).latency_s)
    (candidate,) = result.candidates
    assert candidate.name == "trial 0" and candidate.trial == 0 and candidate.device_map == everything_on_0
    assert result.best is None  # the only trial does not fit


def test_best_fits_and_is_never_worse_than_a_seed() -> None:
    model = toy()
    optimum = brute_force(model)
    assert optimum is not None
    seeds = [DeviceMap(tuple((name, "0") for name in model.graph.unit_names)), optimum.device_map]
    seen: list[Candidate] = []
    result = search(model, storage=None, study_name="s", trials=15, seeds=seeds, seed=1, on_trial=seen.append)
    assert [c.device_map for c in result.candidates[:2]] == seeds  # seeds run first
    assert seen == list(result.candidates) and [c.trial for c in seen] == list(range(15))
    assert result.best is not None and result.best.prediction is not None
    assert result.best.prediction.feasible
    assert result.best.prediction.latency_s <= optimum.latency_s
    feasible = [c.prediction.latency_s for c in result.candidates if c.prediction and c.prediction.feasible]
    assert result.best.prediction.latency_s == min(feasible)


def test_more_seeds_than_trials_still_run_every_seed() -> None:
    model = toy()
    seeds = [
        DeviceMap(tuple((name, place) for name in model.graph.unit_names)) for place in ("0", "1", "cpu")
    ]
    result = search(model, storage=None, study_name="s", trials=1, seeds=seeds)
    assert [c.device_map for c in result.candidates] == seeds


def test_a_named_strategy_is_evaluated_as_given() -> None:
    model = toy(gpu_limits=(8 * GB, 8 * GB))
    split = DeviceMap(tuple((name, "0" if i < 3 else "1") for i, name in enumerate(model.graph.unit_names)))
    storage = optuna.storages.InMemoryStorage()
    result = search(model, storage=storage, study_name="s", trials=40, strategies={"split": split}, seed=0)
    chosen = [t.number for t in study_trials(storage, "s") if t.params["strategy"] == "split"]
    assert chosen
    assert all(result.candidates[n].device_map == split for n in chosen)


# -- what every trial respects -----------------------------------------------------------------


def test_pins_and_excluded_devices_hold_in_every_trial() -> None:
    model = toy(gpu_limits=(2 * GB, 1 * GB, 1 * GB), slowdown=(1.0, 1.5, 1.0))
    pins = {"head": "1", "layer0": "cpu"}
    breaks_pin = DeviceMap(tuple((name, "0") for name in model.graph.unit_names))
    uses_disk = DeviceMap(tuple((name, "1" if name == "head" else "cpu" if name == "layer0" else "disk")
                                for name in model.graph.unit_names))  # fmt: skip
    result = search(model, storage=None, study_name="s", trials=60, seed=0, pins=pins, exclude={"2", "disk"},
                    strategies={"auto": breaks_pin}, seeds=[breaks_pin, uses_disk])  # fmt: skip
    assert len(result.candidates) == 60
    for placements in maps(result.candidates):
        assert placements["head"] == "1" and placements["layer0"] == "cpu"
        assert not {"2", "disk"} & set(placements.values())
    for candidate in result.candidates:
        assert in_class(model, candidate.device_map)
    assert result.best is not None
    optimum = solve(model, pins=pins, exclude={"2", "disk"})
    assert optimum is not None
    assert latency(result.best) <= optimum.latency_s * 1.01


def test_tied_units_share_a_placement_in_every_trial() -> None:
    model = toy(gpu_limits=(1 * GB, 1 * GB), slowdown=(1.0, 1.0), tied=True)
    result = search(model, storage=None, study_name="s", trials=80, seed=0)
    for candidate in result.candidates:
        placements = dict(candidate.device_map.placements)
        assert placements["embed"] == placements["head"]
        assert in_class(model, candidate.device_map)
    optimum = brute_force(model)
    assert optimum is not None and result.best is not None
    assert latency(result.best) == pytest.approx(optimum.latency_s, rel=1e-9)


def test_a_pin_on_an_excluded_device_is_refused() -> None:
    with pytest.raises(ValueError, match="pinned to 1"):
        search(toy(), storage=None, study_name="s", trials=1, pins={"head": "1"}, exclude={"1"})
    with pytest.raises(ValueError, match="unknown unit"):
        search(toy(), storage=None, study_name="s", trials=1, pins={"nope": "0"})


def test_a_map_the_hardware_cannot_price_is_a_complete_infeasible_trial() -> None:
    model = toy(gpu_links=False)  # GPU 1 has no link to anything: maps that use it cannot run
    split = DeviceMap(tuple((name, "0" if i < 3 else "1") for i, name in enumerate(model.graph.unit_names)))
    storage = optuna.storages.InMemoryStorage()
    result = search(model, storage=storage, study_name="s", trials=30, seed=0, seeds=[split])
    trials = study_trials(storage, "s")
    assert all(t.state is optuna.trial.TrialState.COMPLETE for t in trials)
    assert trials[0].constraints == {"unpriceable": 1.0} and "no link" in trials[0].user_attrs["error"]
    assert result.candidates[0].prediction is None
    # the decoder's repair steers manual maps away from what cannot run
    assert all(c.prediction is not None for c in result.candidates[1:])
    assert result.best is not None and "1" not in result.best.device_map.devices


# -- the optimum without seeds --------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(toy(), id="two-gpus-offload"),
        pytest.param(toy(gpu_limits=(1500 * MB,), slowdown=(1.0,), cpu_limit=900 * MB), id="cpu-then-disk"),
        pytest.param(toy(gpu_limits=(1 * GB, 3 * GB), slowdown=(1.0, 3.0), rotary=True), id="slow-big-gpu"),
        pytest.param(toy(gpu_limits=(2 * GB, 2 * GB, 2 * GB), slowdown=(1.0, 1.0, 1.0)), id="three-alike"),
    ],
)
def test_without_seeds_the_search_finds_the_optimum(model: CostModel) -> None:
    optimum = brute_force(model)
    assert optimum is not None
    result = search(model, storage=None, study_name="s", trials=100, seed=0)
    assert result.best is not None
    assert latency(result.best) == pytest.approx(optimum.latency_s, rel=1e-9)


def test_a_tiny_llama_priced_on_meta_reaches_the_exact_optimum(config_folder: Callable[[str], Path]) -> None:
    meta = build_meta_model(resolve_source(str(config_folder("llama"))), "float32")
    workload = Workload(batch=2, seq=64, new_tokens=16, dtype="float32")
    hardware = load_spec("rtx3090-rtx3060-pcie")
    graph = trace_graph(meta, workload)
    memory = profile_units(meta, graph, workload, torch.device("meta"))
    profiles = estimate_profiles(hardware, memory, count_work(meta, workload), "float32")
    roomy = CostModel(graph, profiles, hardware, workload)
    (alone,) = roomy.predict(DeviceMap(tuple((name, "0") for name in graph.unit_names))).memory
    # each GPU holds 80 % of what the model needs on one GPU; the cpu may not be used (tiny
    # models run fastest on it: no transfers), so maps split across the GPUs or read from disk
    limits = {
        gpu: hardware.device(gpu).runtime_overhead + (alone.total - alone.overhead) * 4 // 5 for gpu in "01"
    }
    model = CostModel(graph, profiles, hardware, workload, max_memory=limits)
    optimum = solve(model, exclude={"cpu"})
    assert optimum is not None and set(optimum.device_map.devices) == {"0", "1"}
    strategies = {
        c.name: c.device_map for c in accelerate_maps(meta.model, graph.unit_names, hardware, limits)
    }
    result = search(model, storage=None, study_name="llama", trials=100, seed=0, strategies=strategies,
                    exclude={"cpu"})  # fmt: skip
    assert result.best is not None and result.best.prediction is not None and result.best.prediction.feasible
    assert latency(result.best) <= optimum.latency_s * 1.01
    for candidate in result.candidates:
        assert "cpu" not in candidate.device_map.devices
        assert in_class(model, candidate.device_map) or candidate.device_map in strategies.values()


# -- storage, resume, determinism -------------------------------------------------------------


def test_resume_continues_the_study_in_a_sqlite_file(tmp_path: Path) -> None:
    check_resume(f"sqlite:///{tmp_path / 'tuner.db'}")


@pytest.mark.postgres
def test_resume_continues_the_study_on_postgresql(postgres_url: str) -> None:
    check_resume(postgres_url)


def check_resume(url: str) -> None:
    """Interrupt a search inside a trial, then resume it: the study goes on where it stopped."""
    model = toy()
    seeds = [DeviceMap(tuple((name, "0") for name in model.graph.unit_names))]
    priced = 0
    predict = model.predict

    def interrupted(dmap: DeviceMap):  # type: ignore[no-untyped-def]
        nonlocal priced
        priced += 1
        if priced == 40:
            raise KeyboardInterrupt
        return predict(dmap)

    model.predict = interrupted  # type: ignore[method-assign]
    seen: list[Candidate] = []
    with pytest.raises(KeyboardInterrupt):
        search(model, storage=url, study_name="run-1", trials=50, seeds=seeds, seed=0, on_trial=seen.append)
    model.predict = predict  # type: ignore[method-assign]
    first = optuna.load_study(study_name="run-1", storage=url).trials
    assert first[-1].state is optuna.trial.TrialState.FAIL  # Optuna marks the interrupted trial
    assert [c.trial for c in seen] == [t.number for t in first[:-1]]
    assert seen[0].device_map == seeds[0]

    result = search(
        model, storage=url, study_name="run-1", trials=5, seeds=seeds, seed=0, load_if_exists=True
    )
    # trial numbers continue; the seed already ran, so it is not enqueued again
    assert [c.trial for c in result.candidates] == list(range(len(first), len(first) + 5))
    assert all(c.device_map != seeds[0] for c in result.candidates)
    everything = optuna.load_study(study_name="run-1", storage=url).trials
    assert len(everything) == len(first) + 5
    best_before = min(c.prediction.latency_s for c in seen if c.prediction and c.prediction.feasible)
    assert latency(result.best) <= best_before
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):
        search(model, storage=url, study_name="run-1", trials=1)


def test_a_worker_taken_for_dead_ends_its_search_and_leaves_the_study_to_the_others(tmp_path: Path) -> None:
    """A worker paused past the heartbeats' grace period (SIGSTOP, a swapped-out machine) finds
    on waking that the worker which resumed the run failed its trial: Optuna cannot tell that
    trial, and the search ends there with what the study holds, where it ended the run with
    "unexpected ValueError: Cannot tell a FAIL trial."."""
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    model = toy()
    predict = model.predict
    told: list[Candidate] = []
    taken = False

    def paused(dmap: DeviceMap):  # type: ignore[no-untyped-def]
        nonlocal taken
        if len(told) == 5 and not taken:  # meanwhile the worker that took over fails this trial
            other = optuna.load_study(study_name="run-1", storage=url)
            (running,) = other.get_trials(states=(optuna.trial.TrialState.RUNNING,))
            other.tell(running.number, state=optuna.trial.TrialState.FAIL)
            taken = True
        return predict(dmap)

    model.predict = paused  # type: ignore[method-assign]
    result = search(model, storage=url, study_name="run-1", trials=20, seed=0, on_trial=told.append)
    model.predict = predict  # type: ignore[method-assign]
    trials = optuna.load_study(study_name="run-1", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 5 + [
        optuna.trial.TrialState.FAIL
    ]
    assert [c.trial for c in result.candidates] == [0, 1, 2, 3, 4] and result.study_trials == 5
    assert result.best is not None and result.best.trial in range(5)

    resumed = search(model, storage=url, study_name="run-1", trials=3, seed=0, load_if_exists=True)
    assert [c.trial for c in resumed.candidates] == [6, 7, 8] and resumed.study_trials == 8


def test_the_same_seed_gives_the_same_trials() -> None:
    model = toy(gpu_limits=(2 * GB, 1 * GB, 1 * GB), slowdown=(1.0, 1.5, 1.5))

    def run(seed: int) -> list[tuple[DeviceMap, float]]:
        result = search(model, storage=None, study_name="s", trials=40, seed=seed)
        return [(c.device_map, c.prediction.latency_s) for c in result.candidates if c.prediction]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_optuna_logging_is_quiet_inside_and_restored_after(capfd: pytest.CaptureFixture[str]) -> None:
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        search(toy(), storage=None, study_name="s", trials=3, seed=0)
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.set_verbosity(verbosity)
    err = capfd.readouterr().err
    assert "Trial 0 finished" not in err and "A new study created" not in err
