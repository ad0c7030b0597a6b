"""Orchestration: measure what is missing, store it, and hand back domain objects.

This is where the profiler (torch) and the storage (SQLAlchemy) meet; neither knows the other.
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import replace
from datetime import datetime
from datetime import timezone
from typing import TYPE_CHECKING

from tuner.core.devices import main_device
from tuner.core.domain import STRATEGIES
from tuner.core.domain import Candidate
from tuner.core.domain import DeviceMap
from tuner.core.domain import HardwareProfile
from tuner.core.domain import ModelGraph
from tuner.core.domain import ModelProfile
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload
from tuner.core.domain import stable_hash
from tuner.core.exceptions import ConstraintError
from tuner.core.exceptions import InfeasibleError
from tuner.core.exceptions import ModelSourceError
from tuner.core.exceptions import ProfilingError

if TYPE_CHECKING:
    from profiler.layers import UnitEvent
    from profiler.model import MetaModel
    from storage import Store
    from tuner.plan.costmodel import CostModel

__all__ = [
    "OptimizeListener",
    "OptimizeOutcome",
    "ProfileListener",
    "ProfileOutcome",
    "measure_this_machine",
    "optimize",
    "profile_model",
]


@dataclass(frozen=True)
class ProfileOutcome:
    """A profile and whether it came from the database (`reused`) or was measured now."""

    profile: ModelProfile
    profile_id: int
    reused: bool
    weights_note: str


class ProfileListener:
    """Hooks a progress display can implement; the defaults do nothing."""

    def traced(self, graph: ModelGraph, devices: Sequence[str], calls: int) -> None:
        """The graph is known; `calls` unit calls will be measured in all."""

    def unit_done(self, event: UnitEvent) -> None:
        """One unit call was measured (or shared with an identical unit)."""


def profile_model(
    model: str,
    store: Store,
    *,
    batch: int = 1,
    seq: int = 128,
    new_tokens: int | None = None,
    dtype: str = "float32",
    repeats: int = 5,
    full: bool = False,
    force: bool = False,
    trust_remote_code: bool = False,
    devices: Sequence[str] = (),
    listener: ProfileListener | None = None,
) -> ProfileOutcome:
    """Profile `model` for a workload on this machine, or return the stored profile.

    `new_tokens` left as None means 32 for a model that generates and 0 for one that does not.
    A stored profile is reused when model, hardware and workload match, unless `force` is set or
    a `full` profile is asked for and the stored one shared measurements between units.
    """
    from profiler.model import build_meta_model
    from profiler.source import resolve_source

    listener = listener or ProfileListener()
    source = resolve_source(model)
    meta = build_meta_model(source, dtype, trust_remote_code=trust_remote_code)
    workload = _workload(meta, batch, seq, new_tokens, dtype)
    profile, profile_id, reused = _local_profile(
        meta, workload, store, repeats=repeats, full=full, force=force, devices=devices, listener=listener
    )
    return ProfileOutcome(profile, profile_id, reused=reused, weights_note=_weights_note(source.weights))


def _workload(meta: MetaModel, batch: int, seq: int, new_tokens: int | None, dtype: str) -> Workload:
    if new_tokens is None:
        new_tokens = 32 if meta.model.can_generate() else 0
    return Workload(batch=batch, seq=seq, new_tokens=new_tokens, dtype=dtype)


def _local_profile(
    meta: MetaModel,
    workload: Workload,
    store: Store,
    *,
    repeats: int,
    full: bool,
    force: bool,
    devices: Sequence[str],
    listener: ProfileListener,
) -> tuple[ModelProfile, int, bool]:
    """The stored profile of this model on this machine, or a new measurement; (profile, id, reused)."""
    import torch

    from profiler.hardware import describe_hardware
    from profiler.layers import profile_units
    from profiler.model import trace_graph

    hardware = describe_hardware()
    compute = _compute_devices(hardware, devices)
    key = (meta.fingerprint(), hardware.fingerprint, workload)
    stored = store.find_profile(*key)
    if stored is not None and not force and (stored.full or not full):
        stored_id = store.find_profile_id(*key)
        assert stored_id is not None  # found a moment ago in the same database
        return stored, stored_id, True

    started = time.perf_counter()
    graph = trace_graph(meta, workload)
    calls_per_pass = sum(u.calls + (u.decode_calls if workload.new_tokens else 0) for u in graph.units)
    listener.traced(graph, [str(d) for d in compute], calls_per_pass * len(compute))
    measured: list[UnitProfile] = []
    for device in compute:
        measured.extend(
            profile_units(
                meta,
                graph,
                workload,
                torch.device(device),
                repeats=repeats,
                full=full,
                on_unit=listener.unit_done,
            )
        )
    profile = ModelProfile(
        graph=graph,
        workload=workload,
        hardware_fingerprint=hardware.fingerprint,
        units=tuple(measured),
        full=full,
        seconds=time.perf_counter() - started,
    )
    return profile, store.save_profile(profile), False


def measure_this_machine(store: Store, *, on_step: Callable[[str], None] | None = None) -> HardwareProfile:
    """Measure devices and links of this machine and keep the result."""
    from profiler.hardware import measure_hardware

    hardware = measure_hardware(on_step=on_step)
    store.save_hardware(hardware)
    return hardware


def _compute_devices(hardware: HardwareProfile, requested: Sequence[str]) -> list[str]:
    """Torch device names to measure on: every GPU when there are any, else the CPU."""
    available = {
        device.key: ("cpu" if device.kind == "cpu" else f"{device.kind}:{device.key}")
        for device in hardware.compute_devices
    }
    if requested:
        unknown = [key for key in requested if key not in available]
        if unknown:
            raise ProfilingError(
                f"no compute device {', '.join(unknown)} on this machine (have: {', '.join(available)})"
            )
        return [available[key] for key in requested]
    gpus = [name for key, name in available.items() if key != "cpu"]
    return gpus or ["cpu"]


def _weights_note(weights: str) -> str:
    if weights == "config-only":
        return "no weights in the folder: profiling with random weights (cost does not depend on values)"
    return (
        f"{weights} weights found: profiling with random values of the same shapes "
        "(cost does not depend on them)"
    )


@dataclass(frozen=True)
class OptimizeOutcome:
    """A tuning run, whether it was found in the database (`reused`) rather than searched now, and
    how many trials this call ran (`searched`; other workers on the same study may run more)."""

    run: Run
    reused: bool
    searched: int = 0


class OptimizeListener(ProfileListener):
    """Hooks for a progress display of `optimize`; the defaults do nothing."""

    def phase(self, description: str) -> None:
        """A new phase starts (profiling, planning, exact optimum, search, measuring)."""

    def searching(self, trials: int) -> None:
        """The search starts and will run `trials` trials at most."""

    def trial_done(self, candidate: Candidate) -> None:
        """One trial of the search finished."""

    def measuring(self, maps: int, rounds: int) -> None:
        """`maps` device maps are loaded and timed for real, `rounds` interleaved calls each."""


def optimize(
    model: str,
    store: Store,
    *,
    hardware: str | None = None,
    max_memory: str | None = None,
    batch: int = 1,
    seq: int = 128,
    new_tokens: int | None = None,
    dtype: str = "float32",
    trials: int = 300,
    timeout: float | None = None,
    pins: Sequence[str] = (),
    exclude: Sequence[str] = (),
    seed_search: bool = True,
    force: bool = False,
    resume: int | None = None,
    trust_remote_code: bool = False,
    repeats: int = 5,
    random_seed: int | None = None,
    measure: int = 0,
    measure_rounds: int = 5,
    listener: OptimizeListener | None = None,
) -> OptimizeOutcome:
    """Find the fastest device map of `model` that fits, and keep the run.

    Args:
        hardware: a spec file or shipped spec name; None plans for this machine (measured).
        max_memory: limits such as ``"0=20GiB,1=22GiB,cpu=64GiB"``; unnamed devices may use what
            is free.
        pins: ``UNIT=DEVICE`` placements every candidate must keep.
        exclude: devices no candidate may use.
        seed_search: enqueue accelerate's maps and the exact optimum as the first trials; the
            winner is then never worse than either.
        force: search again even when an identical run is stored.
        resume: continue the interrupted run with this id (same settings required).
        measure: after the search, load this many of the fastest modelled maps and every
            accelerate strategy for real on this machine and time them interleaved
            (`measure_rounds` calls each); the fastest measured map that fits the limits becomes
            the winner, and a map that fails to load or run is stored as infeasible with its
            reason. A stored complete run that was never measured is measured, not searched
            again. 0 keeps the modelled winner.

    Raises:
        ConstraintError: limits, pins or exclusions name unknown units or devices; `measure`
            with a `hardware` spec (measuring needs this machine).
        ModelSourceError: `measure` asked of a model folder without weights.
        InfeasibleError: no map fits, even with every unit on disk.
        RunNotFoundError: `resume` names no run.
    """
    from profiler.model import build_meta_model
    from profiler.source import resolve_source
    from tuner.plan.costmodel import CostModel
    from tuner.plan.exact import solve

    listener = listener or OptimizeListener()
    started = time.perf_counter()
    phase_seconds: dict[str, float] = {}
    _check_measure(measure, measure_rounds, hardware)
    source = resolve_source(model)
    if measure and source.weights == "config-only":
        # Checked before anything is searched: the search alone can take minutes.
        raise ModelSourceError(
            f"{model} holds no weights (config.json only), and --measure loads each map for real: "
            "save weights there (save_pretrained) or give the folder that has them"
        )
    meta = build_meta_model(source, dtype, trust_remote_code=trust_remote_code)
    workload = _workload(meta, batch, seq, new_tokens, dtype)
    machine, machine_name = _hardware(hardware, store, listener)
    limits = _limits(max_memory, machine)
    excluded = _excluded(exclude, machine)
    key = stable_hash(
        {
            "model": meta.fingerprint(),
            "hardware": machine.fingerprint,
            "workload": [workload.batch, workload.seq, workload.new_tokens, workload.dtype],
            "max_memory": limits,
            "pins": sorted(pins),
            "exclude": sorted(excluded),
        }
    )
    previous = _previous_run(store, key, force=force, resume=resume)
    if previous is not None and previous.status is RunStatus.COMPLETE:
        if measure and not previous.measured:
            previous = _measure_run(
                model,
                store,
                previous,
                best=measure,
                rounds=measure_rounds,
                trust_remote_code=trust_remote_code,
                listener=listener,
            )
        return OptimizeOutcome(previous, reused=True)

    listener.phase("profiling")
    graph, profiles = _unit_profiles(meta, workload, machine, store, repeats=repeats, listener=listener)
    pin_map = _pins(pins, graph, machine, excluded)
    phase_seconds["profile"] = time.perf_counter() - started
    try:
        cost_model = CostModel(graph, profiles, machine, workload, max_memory=limits)
    except ValueError as exc:
        raise ConstraintError(str(exc)) from exc

    listener.phase("planning accelerate's maps")
    mark = time.perf_counter()
    baselines = _baselines(meta, cost_model, machine, limits)
    phase_seconds["baselines"] = time.perf_counter() - mark

    listener.phase("exact optimum")
    mark = time.perf_counter()
    exact = solve(cost_model, pins=pin_map, exclude=excluded)
    phase_seconds["exact"] = time.perf_counter() - mark
    if exact is None:
        raise InfeasibleError(_why_nothing_fits(cost_model, machine, excluded, limits))
    baselines.append(Candidate("exact", exact.device_map, exact.prediction))

    if previous is None:
        run = Run(
            id=0,
            key=key,
            model_name=model,
            model_fingerprint=meta.fingerprint(),
            hardware_name=machine_name,
            hardware_fingerprint=machine.fingerprint,
            workload=workload,
            max_memory=limits,
            pins=tuple(sorted(pin_map.items())),
            exclude=tuple(sorted(excluded)),
            study_name=f"tuner-{key}-{int(time.time())}",
            status=RunStatus.RUNNING,
            baselines=tuple(baselines),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        from tuner.plan.search import create_study

        # The study exists before the run does: a worker that finds the run running joins it.
        create_study(store.url, run.study_name)
        run_id = store.create_run(run)
        done = 0
    else:
        run, run_id, done = previous, previous.id, previous.trials
    outcome = _search_and_store(
        cost_model,
        store,
        run,
        run_id,
        baselines,
        trials=trials,
        done=done,
        resumed=previous is not None,
        timeout=timeout,
        pins=pin_map,
        exclude=excluded,
        seed_search=seed_search and previous is None,
        random_seed=random_seed,
        phase_seconds=phase_seconds,
        listener=listener,
    )
    if not measure:
        return outcome
    measured = _measure_run(
        model,
        store,
        outcome.run,
        best=measure,
        rounds=measure_rounds,
        trust_remote_code=trust_remote_code,
        listener=listener,
    )
    return OptimizeOutcome(measured, reused=False)


def _check_measure(measure: int, rounds: int, hardware: str | None) -> None:
    if measure < 0:
        raise ConstraintError(f"--measure counts maps to measure: 0 or more (got {measure})")
    if measure and rounds < 1:
        raise ConstraintError(f"--measure-rounds must be at least 1 (got {rounds})")
    if measure and hardware is not None:
        raise ConstraintError(
            f"--measure loads each map on this machine, so it cannot check a plan for --hardware {hardware}; "
            "drop one of the two"
        )


def _measure_run(
    model: str,
    store: Store,
    run: Run,
    *,
    best: int,
    rounds: int,
    trust_remote_code: bool,
    listener: OptimizeListener,
) -> Run:
    """Time the run's `best` fastest modelled maps and accelerate's strategies for real, and store
    what they showed; the fastest measured map that fits the limits becomes the winner.

    Nothing is written until every map is measured, and then all at once: an interrupt leaves
    the run as it was, complete with its modelled winner.
    """
    from profiler.validate import measure_interleaved

    candidates = store.list_candidates(run.id)
    plan = _measurement_plan(run, candidates, best)
    listener.phase("measuring")
    listener.measuring(len(plan), rounds)
    mark = time.perf_counter()
    results = measure_interleaved(
        model,
        {names[0]: dmap for dmap, names in plan.items()},
        run.workload,
        rounds=rounds,
        reference=True,
        trust_remote_code=trust_remote_code,
    )
    seconds = time.perf_counter() - mark
    by_name = {candidate.name: candidate for candidate in candidates}
    measured = []
    for names in plan.values():
        result = results[names[0]]
        latency = result.latency_s if result.ok else None
        measured += [
            replace(by_name[name], measured_s=latency, measure_error=result.reason) for name in names
        ]
    winner = _measured_winner(measured, run.winner)
    store.record_measurements(
        run.id,
        measured,
        winner=winner.name if winner is not None else None,
        phase_seconds={**run.phase_seconds, "measure": seconds},
    )
    return store.get_run(run.id)


def _measurement_plan(run: Run, candidates: Sequence[Candidate], best: int) -> dict[DeviceMap, list[str]]:
    """The maps to measure, each once, with the names of the candidates that carry its result.

    The `best` fastest feasible maps by the model (baselines first among equals), then every
    accelerate strategy, even one predicted not to fit: its out-of-memory is worth seeing for
    real. Besides the name a map was chosen by, every baseline and the winner that share it
    carry its result, since they are what the tables show; the many trials of a converged search
    that repeat one map do not.
    """
    chosen: dict[DeviceMap, list[str]] = {}
    for candidate in sorted((c for c in candidates if c.feasible), key=_predicted_latency):
        if len(chosen) == best:
            break
        chosen.setdefault(candidate.device_map, [candidate.name])
    for candidate in run.baselines:
        if candidate.name in STRATEGIES:
            chosen.setdefault(candidate.device_map, [])
    shown = [*run.baselines, *([run.winner] if run.winner is not None else [])]
    for candidate in shown:
        names = chosen.get(candidate.device_map)
        if names is not None and candidate.name not in names:
            names.append(candidate.name)
    return chosen


def _measured_winner(measured: Sequence[Candidate], modelled: Candidate | None) -> Candidate | None:
    """The fastest measured candidate among those predicted to fit, or None when none ran.

    A map over the memory limits may well run here (the limits are the user's, and loading does
    not enforce them), but it is not what was asked for. Among names that share the fastest map,
    the modelled winner keeps its name.
    """
    modelled_name = modelled.name if modelled is not None else None
    ran = [
        (candidate.measured_s, candidate.name != modelled_name, index)
        for index, candidate in enumerate(measured)
        if candidate.measured_s is not None and candidate.feasible
    ]
    return measured[min(ran)[2]] if ran else None


def _predicted_latency(candidate: Candidate) -> float:
    return candidate.prediction.latency_s if candidate.prediction is not None else math.inf


def _search_and_store(
    cost_model: CostModel,
    store: Store,
    run: Run,
    run_id: int,
    baselines: list[Candidate],
    *,
    trials: int,
    done: int,
    resumed: bool,
    timeout: float | None,
    pins: dict[str, str],
    exclude: set[str],
    seed_search: bool,
    random_seed: int | None,
    phase_seconds: dict[str, float],
    listener: OptimizeListener,
) -> OptimizeOutcome:
    """Run the study until it holds `trials` complete trials, storing them as they finish; an
    interrupt keeps them and marks the run. A resumed run joins its study, whether it was
    interrupted or another worker is searching it now (a shared RDB such as PostgreSQL)."""
    from tuner.plan.search import search

    pending: list[Candidate] = []
    finished: list[Candidate] = []

    def on_trial(candidate: Candidate) -> None:
        pending.append(candidate)
        finished.append(candidate)
        listener.trial_done(candidate)
        if len(pending) >= _TRIALS_PER_WRITE:
            store.add_candidates(run_id, pending)
            pending.clear()

    strategies = {c.name: c.device_map for c in baselines if c.name in STRATEGIES}
    seeds = [c.device_map for c in baselines] if seed_search else []
    listener.phase("searching")
    listener.searching(max(0, trials - done))
    mark = time.perf_counter()
    try:
        result = search(
            cost_model,
            storage=store.url,
            study_name=run.study_name,
            trials=max(0, trials - done),
            total=trials,
            timeout=timeout,
            strategies=strategies,
            seeds=seeds,
            pins=pins,
            exclude=exclude,
            seed=random_seed,
            on_trial=on_trial,
            load_if_exists=True,  # created with the run, or another worker's
        )
    except KeyboardInterrupt:
        phase_seconds["search"] = time.perf_counter() - mark
        store.add_candidates(run_id, pending)
        store.finish_run(
            run_id,
            status=RunStatus.INTERRUPTED,
            winner=_best([*finished, *(baselines if seed_search else [])]),
            trials=done + len(finished),
            phase_seconds=phase_seconds,
        )
        raise
    phase_seconds["search"] = time.perf_counter() - mark
    store.add_candidates(run_id, pending)
    store.complete_run(
        run_id,
        trials=result.study_trials,
        phase_seconds=phase_seconds,
        baselines_compete=seed_search or resumed,
    )
    return OptimizeOutcome(store.get_run(run_id), reused=False, searched=len(result.candidates))


_TRIALS_PER_WRITE = 50


def _best(candidates: Sequence[Candidate]) -> Candidate | None:
    return min((c for c in candidates if c.feasible), key=_predicted_latency, default=None)


def _hardware(spec: str | None, store: Store, listener: OptimizeListener) -> tuple[HardwareProfile, str]:
    """The spec's hardware, or this machine's (measured once, then read from the database)."""
    if spec is not None:
        from profiler.spec import load_spec

        return load_spec(spec), spec
    from profiler.hardware import describe_hardware

    stored = store.find_hardware(describe_hardware().fingerprint)
    # A profile measured before the page cache was (page_cache None) would price every disk read
    # at the disk's speed: measure again, once.
    if stored is not None and stored.page_cache is not None:
        return stored, "this machine"
    listener.phase("measuring this machine")
    return measure_this_machine(store), "this machine"


def _limits(max_memory: str | None, hardware: HardwareProfile) -> dict[str, int]:
    from tuner.core.sizes import parse_max_memory

    if not max_memory:
        return {}
    try:
        limits = parse_max_memory(max_memory)
    except ValueError as exc:
        raise ConstraintError(f"--max-memory: {exc}") from exc
    keys = [d.key for d in hardware.devices]
    for key in limits:
        if key not in keys:
            raise ConstraintError(
                f"--max-memory names device {key}, which this hardware does not have ({', '.join(keys)})"
            )
    return limits


def _excluded(exclude: Sequence[str], hardware: HardwareProfile) -> set[str]:
    keys = [d.key for d in hardware.devices]
    for key in exclude:
        if key not in keys:
            raise ConstraintError(
                f"--exclude names device {key}, which this hardware does not have ({', '.join(keys)})"
            )
    return set(exclude)


def _pins(
    pins: Sequence[str], graph: ModelGraph, hardware: HardwareProfile, excluded: set[str]
) -> dict[str, str]:
    keys = [d.key for d in hardware.devices]
    result: dict[str, str] = {}
    for pin in pins:
        unit, sep, device = pin.partition("=")
        if not sep or not unit or not device:
            raise ConstraintError(f"--pin {pin!r}: write UNIT=DEVICE, e.g. lm_head=1")
        if unit not in graph.unit_names:
            close = difflib.get_close_matches(unit, graph.unit_names, n=3)
            hint = (
                f"; did you mean {', '.join(close)}?"
                if close
                else f"; units: {', '.join(graph.unit_names[:5])}, ..."
            )
            raise ConstraintError(f"--pin: the model has no unit {unit!r}{hint}")
        if device not in keys:
            raise ConstraintError(f"--pin {pin}: no device {device} ({', '.join(keys)})")
        if device in excluded:
            raise ConstraintError(f"--pin {pin} contradicts --exclude {device}")
        result[unit] = device
    return result


def _previous_run(store: Store, key: str, *, force: bool, resume: int | None) -> Run | None:
    """The run to reuse or continue: the one `resume` names, else a stored complete run."""
    if resume is not None:
        run = store.get_run(resume)
        if run.key != key:
            raise ConstraintError(
                f"run {resume} was tuned with other settings (model, hardware, workload or constraints); "
                "give the same arguments to resume it"
            )
        return run
    return None if force else store.find_complete_run(key)


def _unit_profiles(
    meta: MetaModel,
    workload: Workload,
    hardware: HardwareProfile,
    store: Store,
    *,
    repeats: int,
    listener: ProfileListener,
) -> tuple[ModelGraph, tuple[UnitProfile, ...]]:
    """Measured profiles on this machine; for a spec, roofline estimates with exact memory sizes."""
    if hardware.source != "spec":
        profile, _, _ = _local_profile(
            meta, workload, store, repeats=repeats, full=False, force=False, devices=(), listener=listener
        )
        return profile.graph, profile.units
    import torch

    from profiler.estimate import estimate_profiles
    from profiler.flops import count_work
    from profiler.layers import profile_units
    from profiler.model import trace_graph

    graph = trace_graph(meta, workload)
    memory = profile_units(meta, graph, workload, torch.device("meta"))
    return graph, estimate_profiles(hardware, memory, count_work(meta, workload), workload.dtype)


def _baselines(
    meta: MetaModel, cost_model: CostModel, hardware: HardwareProfile, limits: dict[str, int]
) -> list[Candidate]:
    """accelerate's strategies and every single device that can compute, each priced."""
    from tuner.plan.baselines import accelerate_maps
    from tuner.plan.baselines import single_device_maps

    names = cost_model.graph.unit_names
    candidates = [*accelerate_maps(meta.model, names, hardware, limits), *single_device_maps(names, hardware)]
    priced = []
    for candidate in candidates:
        try:
            priced.append(replace(candidate, prediction=cost_model.predict(candidate.device_map)))
        except ValueError:
            continue  # a device with no profile (the cpu when GPUs are measured) computes nothing
    return priced


def _why_nothing_fits(
    cost_model: CostModel, hardware: HardwareProfile, excluded: set[str], limits: dict[str, int]
) -> str:
    """Name the device that falls short even when every unit sits on disk, and by how much."""
    from tuner.core.sizes import format_bytes

    compute = [d.key for d in hardware.compute_devices if d.key not in excluded]
    main = main_device(key for key in compute if key != "mps")
    lightest = DeviceMap(tuple((name, "disk") for name in cost_model.graph.unit_names))
    if main != "cpu":
        # the first unit must sit on the main device for accelerate to execute there
        first, *rest = cost_model.graph.unit_names
        lightest = DeviceMap(((first, main), *((name, "disk") for name in rest)))
    try:
        prediction = cost_model.predict(lightest)
    except ValueError as exc:
        return f"no device map fits the limits ({exc})"
    if prediction.feasible:
        return "no device map fits the limits together with the pins and exclusions given"
    worst = max(prediction.shortfalls, key=lambda m: m.over_by)
    return (
        f"no device map fits: even with every unit on disk, device {worst.device} needs "
        f"{format_bytes(worst.over_by)} more than its {format_bytes(worst.limit)} "
        f"(KV cache {format_bytes(worst.kv_cache)}, working set {format_bytes(worst.working_set)}, "
        f"runtime {format_bytes(worst.overhead)})"
    )
