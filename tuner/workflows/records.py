"""Stored runs read back (history, one run, its candidates, its HTML report), the database's
schema, and `validate`: load a map for real and, for a stored run, keep what it measured."""

from __future__ import annotations

import os
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from typing import TYPE_CHECKING
from typing import Any

from tuner.core.domain import AUTO_DTYPE
from tuner.core.domain import THIS_MACHINE
from tuner.core.domain import Candidate
from tuner.core.domain import DeviceMap
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.domain import Workload
from tuner.core.exceptions import ConstraintError
from tuner.core.exceptions import RunNotFoundError
from tuner.core.exceptions import SpecError
from tuner.core.exceptions import StorageError
from tuner.core.exceptions import WorkloadError
from tuner.workflows.guard import check_host_memory
from tuner.workflows.guard import expanded
from tuner.workflows.measuring import measured_phases
from tuner.workflows.measuring import over_limits
from tuner.workflows.request import TuningRequest
from tuner.workflows.request import check_device_map
from tuner.workflows.request import check_spec_name
from tuner.workflows.request import check_whole_numbers
from tuner.workflows.request import checked_workload
from tuner.workflows.request import read_dtype
from tuner.workflows.request import read_max_memory
from tuner.workflows.request import read_placements

if TYPE_CHECKING:
    from profiler.validate import Validation
    from storage import Store

__all__ = [
    "RunHistory",
    "SchemaUpgrade",
    "ValidationOutcome",
    "best_run",
    "database_url",
    "get_run",
    "list_candidates",
    "list_runs",
    "report_html",
    "run_history",
    "upgrade_database",
    "validate",
]

#: How a caller names the newest run instead of its id.
LATEST = "latest"


def get_run(run: int | str, *, db: str | Store | None = None) -> Run:
    """The run with this id, or the newest run for ``"latest"``.

    Raises:
        RunNotFoundError: no such run (or no run at all for ``"latest"``).
        ConstraintError: `run` is neither an id nor ``"latest"``.
    """
    from storage import opened

    with opened(db, existing=True) as store:
        return _find(store, run)


def list_runs(
    *,
    model: str | None = None,
    hardware: str | None = None,
    status: RunStatus | str | None = None,
    limit: int = 20,
    offset: int = 0,
    db: str | Store | None = None,
) -> list[Run]:
    """Runs newest first; `model` and `hardware` keep those whose names contain the text, `status`
    those with that status (``running``, ``complete``, ...); `offset` skips the newest (paging)."""
    from storage import opened

    check_whole_numbers(ConstraintError, limit=(limit, 1), offset=(offset, 0))
    wanted = None if status is None else _status(status)
    with opened(db, existing=True) as store:
        return store.list_runs(model=model, hardware=hardware, status=wanted, limit=limit, offset=offset)


def best_run(
    model: str,
    *,
    hardware: str,
    batch: int = 1,
    seq: int = 128,
    new_tokens: int | None = None,
    dtype: str = AUTO_DTYPE,
    max_memory: Mapping[Any, int | str] | None = None,
    db: str | Store | None = None,
) -> Run | None:
    """The newest complete run tuned for exactly this request, found by the names it was given
    (no model file is read, no torch loaded): the model and hardware as named when tuned, the
    workload, the memory limits, and no pins or excluded devices. None when there is none. A
    spec file that can be read here is: a run tuned for devices it no longer describes is not
    the answer.

    `new_tokens` None and `dtype` ``auto`` match a run of any, as `optimize` resolves them.

    Raises:
        WorkloadError, ConstraintError: an argument that cannot be read; the message names it.
        SpecError: `hardware` is named as a shipped spec is, and none is (no run can be tuned
            for it).
    """
    from storage import opened

    if hardware != THIS_MACHINE:
        check_spec_name(hardware)
    request = TuningRequest.from_arguments(
        model,
        hardware=hardware,
        batch=batch,
        seq=seq,
        new_tokens=new_tokens,
        dtype=dtype,
        max_memory=max_memory,
    )
    with opened(db) as store:
        return store.find_tuned_run(
            model=request.model,
            hardware=request.hardware or hardware,
            batch=request.batch,
            seq=request.seq,
            new_tokens=request.new_tokens,
            dtype=None if request.dtype == AUTO_DTYPE else request.dtype,
            max_memory=dict(request.max_memory),
            hardware_fingerprint=_spec_fingerprint(request.hardware),
        )


def _spec_fingerprint(spec: str | None) -> str | None:
    """The devices a spec describes now (`HardwareProfile.fingerprint`), when its file can be read
    here: a run tuned before the file was edited to other devices or memory is not the answer.
    None for this machine, or a spec file only the workers can read."""
    from profiler.spec import load_spec

    if spec is None:
        return None
    try:
        return load_spec(spec).fingerprint
    except SpecError:
        return None


@dataclass(frozen=True)
class RunHistory:
    """Stored runs newest first, and the runs that could not be read (a damaged row), so that one
    bad run hides no other.

    Args:
        runs: the runs read.
        unreadable: run id -> why it cannot be read, in one line.
    """

    runs: tuple[Run, ...]
    unreadable: Mapping[int, str]


def run_history(
    *,
    model: str | None = None,
    hardware: str | None = None,
    status: RunStatus | str | None = None,
    limit: int = 20,
    db: str | Store | None = None,
) -> RunHistory:
    """As `list_runs`, naming the runs that cannot be read instead of failing on the first."""
    from storage import opened

    check_whole_numbers(ConstraintError, limit=(limit, 1))
    wanted = None if status is None else _status(status)
    with opened(db, existing=True) as store:
        runs, unreadable = store.browse_runs(model=model, hardware=hardware, status=wanted, limit=limit)
    return RunHistory(tuple(runs), unreadable)


def list_candidates(
    run: int | str, *, measured_only: bool = False, db: str | Store | None = None
) -> list[Candidate]:
    """Every map a run priced: baselines, then trials in order. With `measured_only`, the maps that
    were loaded and run for real, whether they ran or failed."""
    from storage import opened

    with opened(db, existing=True) as store:
        candidates = store.list_candidates(_find(store, run).id)
    if measured_only:
        return [c for c in candidates if c.measured_s is not None or c.measure_error]
    return candidates


def report_html(run: int | str, *, db: str | Store | None = None) -> str:
    """One self-contained HTML page on a run: placement, memory against limits, per-unit costs,
    the comparison with accelerate and the exact optimum, and the search history."""
    from reports.html import render
    from storage import opened

    with opened(db, existing=True) as store:
        found = _find(store, run)
        candidates = store.list_candidates(found.id)
        profile = store.find_profile(found.model_fingerprint, found.hardware_fingerprint, found.workload)
    return render(
        found,
        candidates,
        graph=profile.graph if profile else None,
        profiles=profile.units if profile else (),
    )


@dataclass(frozen=True)
class ValidationOutcome:
    """What loading a map for real showed, and the prediction it is held against.

    Args:
        validation: outputs compared with one device, measured latency and peak memory.
        predicted_s: the run's predicted latency when a stored run was validated for the workload
            it was tuned for; None otherwise.
        run_id: the run validated, if any; its winner now carries the measured latency.
        workload: the workload the map was loaded and run for, its dtype resolved.
        ratios: measured over predicted (prefill, one decode step) when a run planned for this
            machine was validated for its workload; stored on the run for ``--calibrate``.
        busy: why the timings may not be this machine's (others loaded it); empty when quiet.
        limits: bytes each device key was allowed (the run's limits, or those given with the
            map), to hold the peaks against; devices not named have none.
        predicted_memory: the run's predicted peak bytes per device key, when a stored run was
            validated for the workload it was tuned for; empty otherwise.
        kept_quiet: the run's earlier measured latency (seconds) when it was taken on a quiet
            machine and this one on a busy one, which therefore was not stored; else None.
        planned_elsewhere: where a validated run was planned when that is not this machine (a
            spec's name, or ``another machine``): its prediction is for there, so this timing is
            neither held against it nor stored; empty otherwise.
        inputs: what the model takes as a prompt (`INPUT_KINDS`), for `Workload.describe`.
        seq_note: that the seq asked for does not apply to a model that takes no text (its
            workload keeps the default seq, as its runs do); empty otherwise.
    """

    validation: Validation
    predicted_s: float | None = None
    run_id: int | None = None
    workload: Workload | None = None
    ratios: tuple[float | None, float | None] | None = None
    busy: str = ""
    limits: Mapping[str, int] = field(default_factory=dict)
    predicted_memory: Mapping[str, int] = field(default_factory=dict)
    kept_quiet: float | None = None
    planned_elsewhere: str = ""
    inputs: str = "text"
    seq_note: str = ""

    @property
    def over_limits(self) -> dict[str, int]:
        """Device key -> bytes its peak went over its limit, for each device that did."""
        return over_limits(self.validation.peak_memory, self.limits)

    @property
    def ok(self) -> bool:
        """Whether the map loaded and ran, with the outputs of the model on one device."""
        return self.validation.ok

    @property
    def fits(self) -> bool | None:
        """Whether every device's measured peak stayed within its limit; None when nothing was
        measured (the map failed to load), which a script must not read as fitting."""
        if not self.validation.peak_memory:
            return None
        return not self.over_limits


def validate(
    model: str | os.PathLike[str],
    *,
    device_map: Mapping[str, int | str] | None = None,
    run: int | str | None = None,
    batch: int | None = None,
    seq: int | None = None,
    new_tokens: int | None = None,
    dtype: str | None = None,
    repeats: int = 5,
    trust_remote_code: bool = False,
    max_memory: Mapping[Any, int | str] | None = None,
    db: str | Store | None = None,
) -> ValidationOutcome:
    """Load `model` with a map for real: same outputs as one device? measured latency and memory.

    Give either `device_map` (as `from_pretrained` takes it) or `run` (its winner and workload;
    the measured latency is stored on the run when the workload is the one it was tuned for, on
    the machine it was planned on: a run planned for a spec is timed, not held against its
    prediction, `ValidationOutcome.planned_elsewhere`).
    Workload arguments left as None take the run's (the dtype it was planned in), else batch 1,
    seq 128, no generation, and ``auto``: the dtype ``from_pretrained`` loads without one.
    The peaks are held against `max_memory` (as `optimize` takes it), else the run's limits.

    Raises:
        ConstraintError: neither or both of `device_map` and `run`, a map that names no device,
            or one that places units on devices this machine lacks (a map planned for a spec).
        RunNotFoundError: `run` names no run; or the run has no map (none fits, or not yet).
        ModelSourceError, WorkloadError: the model or the workload cannot be used (batch or seq
            below 1, negative new tokens, an unknown dtype), before anything is loaded.
        ConstraintError: also for a model that is not a name or a path, or repeats below 1.
    """
    from profiler.hardware import LoadWatch
    from profiler.hardware import describe_hardware
    from profiler.loading import absent_devices
    from profiler.loading import open_checkpoint
    from profiler.model import build_meta_model
    from profiler.model import model_dtype
    from profiler.validate import validate as validate_map
    from storage import opened

    if not isinstance(model, (str, os.PathLike)) or not os.fspath(model):
        raise ConstraintError(f"model must be a folder or a hub id (got {model!r})")
    model = os.fspath(model)
    if (device_map is None) == (run is None):
        raise ConstraintError("give exactly one of device_map and run")
    asked_numbers = {"batch": (batch, 1), "seq": (seq, 1), "new_tokens": (new_tokens, 0)}
    check_whole_numbers(
        WorkloadError, **{name: asked for name, asked in asked_numbers.items() if asked[0] is not None}
    )
    check_whole_numbers(ConstraintError, repeats=(repeats, 1))
    if dtype is not None:
        dtype = read_dtype(dtype)
    limits = read_max_memory(max_memory)
    found: Run | None = None
    if run is not None:
        with opened(db, existing=True) as store:
            found = _find(store, run)
        if found.winner is None:
            raise RunNotFoundError(found.no_map)
        dmap, base = found.winner.device_map, found.workload
        limits = limits if max_memory is not None else dict(found.max_memory)
    else:
        assert device_map is not None
        dmap, base = DeviceMap(tuple(read_placements("device_map", device_map).items())), Workload()
    absent = absent_devices(place for _, place in dmap.placements)
    if absent:
        planned = f"run {found.id} was planned for {found.hardware_name}" if found else "the map names them"
        raise ConstraintError(f"this machine has no {absent}: {planned}; validate the map on that hardware")
    asked = dtype or (base.dtype if found is not None else AUTO_DTYPE)
    workload = Workload(
        batch=base.batch if batch is None else batch,
        seq=base.seq if seq is None else seq,
        new_tokens=base.new_tokens if new_tokens is None else new_tokens,
        dtype=model_dtype(model, asked, trust_remote_code=trust_remote_code)
        if asked == AUTO_DTYPE
        else asked,
    )
    # A run planned for a spec, or on another machine, is not timed here: the map is checked to
    # load and run, and neither held against its prediction nor stored on the run.
    planned_here = found is not None and (
        found.hardware_name == THIS_MACHINE and found.hardware_fingerprint == describe_hardware().fingerprint
    )
    source = open_checkpoint(model)  # no weights: refused before the meta pass
    meta = build_meta_model(source, workload.dtype, trust_remote_code=trust_remote_code)
    # a vision or speech model's seq stays the default, as in the run: the same workload, said so
    workload, inputs, seq_note = checked_workload(meta, workload, source.path)
    if planned_here and found is not None and workload == found.workload:
        with opened(db) as store:
            store.check_writable()  # the measurement is stored on the run: not lost after the work
    if found is not None:
        _check_same_units(found, dmap, meta.unit_names, model)
    else:  # as `price` checks it: a map that splits a unit or misses one fails the load obscurely
        check_device_map("device_map", dict(dmap.placements), meta, describe_hardware())
    check_host_memory(meta, workload, expanded(dmap), doing="validating the map with")
    with LoadWatch() as watch:
        result = validate_map(model, dmap, workload, repeats=repeats, trust_remote_code=trust_remote_code)
    if found is None or found.winner is None or workload != found.workload or not planned_here:
        elsewhere = ""
        if found is not None and not planned_here:
            elsewhere = found.hardware_name if found.hardware_name != THIS_MACHINE else "another machine"
        return ValidationOutcome(
            result,
            run_id=found.id if found else None,
            workload=workload,
            inputs=inputs,
            seq_note=seq_note,
            busy=watch.busy,
            limits=limits,
            planned_elsewhere=elsewhere,
        )
    prediction = found.winner.prediction
    predicted = prediction.latency_s if prediction is not None else None
    predicted_memory = (
        {} if prediction is None else {memory.device: memory.total for memory in prediction.memory}
    )
    # Measured on the machine the run was planned for: the phases teach `optimize --calibrate`.
    measured = replace(found.winner, **measured_phases(result, watch.busy))
    # a busy timing does not replace a quiet one: `optimize --calibrate` learns from quiet ones alone
    kept = bool(watch.busy) and found.winner.measured_s is not None and not found.winner.measure_busy
    if result.ok and result.latency_s is not None and not kept:
        with opened(db) as store:
            store.finish_run(
                found.id,
                status=found.status,
                winner=measured,
                trials=found.trials,
                phase_seconds=found.phase_seconds,
            )
    return ValidationOutcome(
        result,
        predicted_s=predicted,
        run_id=found.id,
        workload=workload,
        inputs=inputs,
        seq_note=seq_note,
        ratios=measured.phase_ratios if result.ok and measured.measured_prefill_s is not None else None,
        busy=watch.busy,
        limits=limits,
        predicted_memory=predicted_memory,
        kept_quiet=found.winner.measured_s if kept else None,
    )


def _check_same_units(run: Run, dmap: DeviceMap, unit_names: Sequence[str], model: str) -> None:
    """Refuse to load a run's map into a model it was not tuned for: its units are not the model's."""
    units = set(unit_names)
    foreign = [unit for unit, _ in dmap.placements if unit not in units]
    if foreign or len(dmap.placements) != len(units):
        lacking = f"{model} has no {foreign[0]!r}" if foreign else f"{model} has other units"
        raise ConstraintError(
            f"run {run.id} was tuned for {run.model_name}, and its map does not fit {model} "
            f"({lacking}); validate it with the model it was tuned for"
        )


@dataclass(frozen=True)
class SchemaUpgrade:
    """What `upgrade_database` did: the database's URL (password hidden), the schema revisions it
    was at (none: it was empty, and its schema was created) and the one it is at now."""

    url: str
    before: tuple[str, ...]
    revision: str


def upgrade_database(db: str | None = None) -> SchemaUpgrade:
    """Bring the database's schema up to this tuner's (a no-op when it is there already)."""
    from storage import SCHEMA_REVISION
    from storage import Store

    with Store(db, check_schema=False) as store:
        before = store.upgrade()
        return SchemaUpgrade(store.shown_url, before, SCHEMA_REVISION)


def database_url(db: str | None = None) -> str:
    """The URL of the database `db` (None: the default) names, password hidden.

    Raises:
        StorageError: `db` is blank, which names no database (as opening it says).
    """
    from storage import as_url
    from storage import default_url
    from storage import describe_url

    if db is not None and not db.strip():
        raise StorageError(f"{db!r} is not a database URL: give a SQLAlchemy URL or a SQLite file's path")
    return describe_url(as_url(db) if db is not None else default_url())


def _find(store: Store, run: int | str) -> Run:
    if run == LATEST:
        latest = store.latest_run()
        if latest is None:
            raise RunNotFoundError("no runs yet: optimize a model to store one")
        return latest
    if isinstance(run, bool) or not (isinstance(run, int) or (isinstance(run, str) and run.isdigit())):
        raise ConstraintError(f"{run!r} is not a run id; give a number or {LATEST!r}")
    return store.get_run(int(run))


def _status(status: RunStatus | str) -> RunStatus:
    try:
        return RunStatus(status)
    except ValueError:
        choices = ", ".join(member.value for member in RunStatus)
        raise ConstraintError(f"status: unknown {status!r}; choose one of {choices}") from None
