"""The measurement policy of `optimize(measure=K)`: which maps to load and time for real, which
one wins once they are timed, and what the timings teach the cost model (`learned_calibration`)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING
from typing import Any

from tuner.core.domain import FITTED_AUTO
from tuner.core.domain import STRATEGIES
from tuner.core.domain import Calibration
from tuner.core.domain import Candidate
from tuner.core.domain import DeviceMap
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Run
from tuner.core.exceptions import ConstraintError
from tuner.core.exceptions import ModelSourceError
from tuner.core.exceptions import WorkloadError
from tuner.core.sizes import format_bytes
from tuner.workflows.guard import available_ram
from tuner.workflows.guard import host_peaks
from tuner.workflows.listeners import OptimizeListener

if TYPE_CHECKING:
    from profiler.model import MetaModel
    from profiler.source import ModelSource
    from profiler.validate import Validation
    from storage import Store

__all__ = [
    "check_measurable",
    "learned_calibration",
    "measure_run",
    "measured_phases",
    "over_limits",
    "predicted_latency",
]


def check_measurable(measure: int, rounds: int, hardware: str | None, source: ModelSource) -> None:
    """Refuse, before any search, a measurement that cannot happen: the search alone can take
    minutes."""
    if measure < 0:
        raise ConstraintError(f"measure counts maps to measure: 0 or more (got {measure})")
    if measure and rounds < 1:
        raise ConstraintError(f"measure_rounds must be at least 1 (got {rounds})")
    if measure and hardware is not None:
        raise ConstraintError(
            f"measuring loads each map on this machine, so it cannot check a plan for the hardware "
            f"{hardware}; plan for this machine or do not measure"
        )
    if measure and source.weights == "config-only":
        raise ModelSourceError(
            f"{source.name} holds no weights (config.json only), and measuring loads each map for real: "
            "save weights there (save_pretrained) or give the folder that has them"
        )


def measure_run(
    model: str,
    meta: MetaModel,
    store: Store,
    run: Run,
    *,
    best: int,
    rounds: int,
    trust_remote_code: bool,
    listener: OptimizeListener,
) -> Run:
    """Time the run's `best` fastest modelled maps and accelerate's strategies for real, and store
    what they showed; the fastest measured map that fits the limits becomes the winner. A map
    whose measured peak memory goes over a limit is stored as failed, with both figures: the
    prediction it was chosen by fell short.

    A map the meta pass predicts to need more RAM than this machine has available is not loaded
    (its out-of-memory would be the kernel's OOM killer's): it is stored as failed, with both
    figures.

    Nothing is written until every map is measured, and then all at once: an interrupt leaves
    the run as it was, complete with its modelled winner.

    Raises:
        WorkloadError: no map to measure fits this machine's RAM; nothing is stored.
    """
    from profiler.hardware import LoadWatch
    from profiler.validate import Validation
    from profiler.validate import measure_interleaved

    candidates = store.list_candidates(run.id)
    plan = _measurement_plan(run, candidates, best)
    available = available_ram()
    peaks = host_peaks(meta, run.workload, lambda _: list(plan), budget=available)
    refused = {
        names[0]: Validation.failed(f"not loaded: {peak.refusal(run.workload, available)}")
        for (dmap, names), peak in zip(plan.items(), peaks, strict=True)
        if peak.nbytes > available
    }
    if len(refused) == len(plan):
        smallest = min(peaks, key=lambda peak: peak.nbytes)
        lightest = smallest.refusal(run.workload, available)
        raise WorkloadError(f"measuring run {run.id}: its lightest map at {lightest}")
    listener.phase("measuring")
    listener.measuring(len(plan) - len(refused), rounds)
    mark = time.perf_counter()
    with LoadWatch() as watch:
        results = measure_interleaved(
            model,
            {names[0]: dmap for dmap, names in plan.items() if names[0] not in refused},
            run.workload,
            rounds=rounds,
            reference=True,
            trust_remote_code=trust_remote_code,
        )
    results.update(refused)
    for name, result in results.items():
        over = over_limits(result.peak_memory, run.max_memory)
        if result.ok and over:  # ran, but not within what was asked: no answer to the request
            peak, limit = result.peak_memory, run.max_memory
            went = "; ".join(
                f"{key}: {format_bytes(peak[key])} of {format_bytes(limit[key])}" for key in sorted(over)
            )
            results[name] = Validation.failed(f"its measured peak memory went over the limit ({went})")
    seconds = time.perf_counter() - mark
    if watch.busy:
        listener.note(f"the maps were timed while the machine was busy ({watch.busy})")
    by_name = {candidate.name: candidate for candidate in candidates}
    measured = []
    for names in plan.values():
        result = results[names[0]]
        phases = measured_phases(result, watch.busy)
        measured += [replace(by_name[name], **phases) for name in names]
    winner = _measured_winner(measured, run.winner)
    store.record_measurements(
        run.id,
        measured,
        winner=winner.name if winner is not None else None,
        phase_seconds={**run.phase_seconds, "measure": seconds},
    )
    return store.get_run(run.id)


def measured_phases(result: Validation, busy: str) -> dict[str, Any]:
    """The `Candidate` fields a measurement on the planned machine fills: the whole latency, each
    phase, and whether the machine was busy; only the reason when the map failed."""
    if not result.ok:
        return {"measured_s": None, "measure_error": result.reason}
    return {
        "measured_s": result.latency_s,
        "measure_error": "",
        "measured_prefill_s": result.prefill_s,
        "measured_decode_s": result.decode_s,
        "measure_busy": busy,
    }


def learned_calibration(
    hardware: HardwareProfile, store: Store, listener: OptimizeListener
) -> Calibration | None:
    """The factors `optimize --calibrate` multiplies each phase by: the median of measured over
    predicted of the maps timed on this machine while it was quiet (`Calibration.from_ratios`);
    None, and the listener told why, when there are none."""
    measured = store.measured_phases(hardware.fingerprint)
    quiet = [candidate for candidate in measured if not candidate.measure_busy]
    calibration = Calibration.from_ratios(candidate.phase_ratios for candidate in quiet)
    if calibration is None:
        busy = len(measured) - len(quiet)
        listener.note(
            "nothing to calibrate with: no map was timed on this machine while it was quiet"
            + (f" ({busy} timed while it was busy left out)" if busy else "")
            + "; validate a run or optimize --measure first. Priced uncalibrated"
        )
        return None
    listener.note(
        f"calibrated with {calibration.maps} maps timed on this machine: predicted prefill x"
        f"{calibration.prefill:.2f}, decode step x{calibration.decode:.2f} (measured over predicted, median)"
    )
    return calibration


def predicted_latency(candidate: Candidate) -> float:
    """The modelled latency, infinite for a map that was never priced."""
    return candidate.prediction.latency_s if candidate.prediction is not None else math.inf


def _measurement_plan(run: Run, candidates: Sequence[Candidate], best: int) -> dict[DeviceMap, list[str]]:
    """The maps to measure, each once, with the names of the candidates that carry its result.

    The `best` fastest feasible maps by the model (baselines first among equals), then every
    accelerate strategy, even one predicted not to fit: its out-of-memory is worth seeing for
    real; and ``auto`` planned under limits lowered until it fits, when the run has it. Besides
    the name a map was chosen by, every baseline and the winner that share it carry its result,
    since they are what the tables show; the many trials of a converged search that repeat one
    map do not.
    """
    chosen: dict[DeviceMap, list[str]] = {}
    for candidate in sorted((c for c in candidates if c.feasible), key=predicted_latency):
        if len(chosen) == best:
            break
        chosen.setdefault(candidate.device_map, [candidate.name])
    for candidate in run.baselines:
        if candidate.name in STRATEGIES or candidate.name.startswith(FITTED_AUTO):
            chosen.setdefault(candidate.device_map, [])
    shown = [*run.baselines, *([run.winner] if run.winner is not None else [])]
    for candidate in shown:
        names = chosen.get(candidate.device_map)
        if names is not None and candidate.name not in names:
            names.append(candidate.name)
    return chosen


def over_limits(peaks: Mapping[str, int], limits: Mapping[str, int]) -> dict[str, int]:
    """Device key -> bytes a measured peak went over its limit, for each device where it did."""
    return {key: peaks[key] - limit for key, limit in limits.items() if peaks.get(key, 0) > limit}


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
