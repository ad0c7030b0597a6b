"""`optimize`: check the request, reuse or resume a stored run, else profile, price accelerate's
strategies and the caller's maps, find the exact optimum, search with Optuna, store the run, and
measure its best maps for real when asked. Also the fast lookup of a stored answer.

Several processes, one database: identical requests make one run. The first to get past profiling
creates the run (and its study) under the database's lock (`Store.exclusive`); a later one finds
it there and reuses it when complete, resumes it when interrupted, or joins its search when it is
running (the workers share the study and its trial budget; a worker whose search ended waits for
the trials the others still run, so that the run completes when its last trial ends, with every
trial of the study). `tuner worker` joins the same way when nothing is queued (`tune_queued`).
A process working on a run renews the run's lease from a thread (`_Lease`), so that a run whose
processes all died (SIGKILL, a lost machine) reads as interrupted once the lease expires, and the
same request then resumes it.

Interrupts: from the moment the run is claimed until it is stored, Ctrl-C and SIGTERM (which the
command line turns into Ctrl-C) stop the search after the trial that is running (`_Interrupts`),
never in the middle of Optuna's bookkeeping or of a transaction; the run is then marked interrupted
with every trial it holds. A second one stops at once. Before the run is claimed (profiling) an
interrupt stops at once, and no run is named.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import replace
from datetime import datetime
from datetime import timezone
from types import FrameType
from types import TracebackType
from typing import TYPE_CHECKING

from tuner.core.domain import MAX_RANDOM_SEED
from tuner.core.domain import STRATEGIES
from tuner.core.domain import THIS_MACHINE
from tuner.core.domain import Candidate
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.exceptions import ConstraintError
from tuner.core.exceptions import InfeasibleError
from tuner.core.exceptions import RunInterrupted
from tuner.core.exceptions import StorageError
from tuner.core.exceptions import TunerError
from tuner.workflows.listeners import OptimizeListener
from tuner.workflows.measuring import check_measurable
from tuner.workflows.measuring import learned_calibration
from tuner.workflows.measuring import measure_run
from tuner.workflows.measuring import predicted_latency
from tuner.workflows.profiling import build_cost_model
from tuner.workflows.profiling import planning_hardware
from tuner.workflows.request import Prepared
from tuner.workflows.request import TuningRequest
from tuner.workflows.request import check_flags
from tuner.workflows.request import check_whole_numbers
from tuner.workflows.request import prepare
from tuner.workflows.request import priced_from
from tuner.workflows.request import priced_from_stored_profile
from tuner.workflows.request import request_key

if TYPE_CHECKING:
    from storage import Store
    from tuner.plan.costmodel import CostModel
    from tuner.plan.search import Database

__all__ = [
    "OptimizeOutcome",
    "SearchSettings",
    "find_tuned_run",
    "optimize",
    "priced_baselines",
    "tune_queued",
]

#: Trials written to the database in one transaction while the search runs.
_TRIALS_PER_WRITE = 50
#: How long a worker whose search ended waits for the trials other workers of the run still run
#: (one each: the budget is spent), and how often it looks: at first soon (a trial takes
#: milliseconds), then less and less often (each look reads the study: a dead worker's trial,
#: waited on for minutes, kept a core busy).
_SETTLE_SECONDS = 300.0
_SETTLE_FIRST_POLL_SECONDS = 0.2
_SETTLE_LONGEST_POLL_SECONDS = 2.0
#: A wait for other workers' trials longer than this is said (a dead worker's takes minutes).
_SETTLE_SAID_AFTER_SECONDS = 2.0


@dataclass(frozen=True)
class SearchSettings:
    """How a run is searched and checked; none of it changes which run answers a request.

    Args:
        trials: Optuna trials the run's study should hold (shared by all its workers).
        timeout: stop searching after this many seconds.
        seed_search: enqueue accelerate's maps, the caller's and the exact optimum first; the
            winner is then never worse than any of them.
        random_seed: the sampler's seed, for repeatable searches.
        force: measure this machine and the model's profile again, and search again, even when
            an identical run is stored.
        resume: continue the run with this id (interrupted, or searched by another worker).
        repeats: timed calls per unit when profiling.
        measure: load this many of the fastest modelled maps, and every accelerate strategy, for
            real and time them; the fastest measured map that fits becomes the winner.
        measure_rounds: timed calls per measured map, interleaved across maps.

    Raises:
        ConstraintError: a negative count, rounds or repeats below 1, or both force and resume.
    """

    trials: int = 300
    timeout: float | None = None
    seed_search: bool = True
    random_seed: int | None = None
    force: bool = False
    resume: int | None = None
    repeats: int = 5
    measure: int = 0
    measure_rounds: int = 5

    def __post_init__(self) -> None:
        check_flags(ConstraintError, seed_search=self.seed_search, force=self.force)
        check_whole_numbers(
            ConstraintError,
            trials=(self.trials, 0),
            repeats=(self.repeats, 1),
            measure=(self.measure, 0),
            measure_rounds=(self.measure_rounds, 1),
        )
        seed = self.random_seed
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_RANDOM_SEED
        ):
            # checked before a run is stored: the sampler checks it only once the search starts
            raise ConstraintError(
                f"random_seed must be a whole number from 0 to {MAX_RANDOM_SEED} (got {seed!r})"
            )
        timeout = self.timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0
        ):  # NaN included: it compares false
            raise ConstraintError(f"timeout must be a number of seconds, 0 or more (got {self.timeout!r})")
        resume = self.resume
        if resume is not None and (isinstance(resume, bool) or not isinstance(resume, int) or resume < 1):
            raise ConstraintError(f"resume must be a run id or 'latest' (got {resume!r})")
        if self.force and self.resume is not None:
            raise ConstraintError(
                f"give force or resume, not both: resume continues run {self.resume}, force starts a new run"
            )


@dataclass(frozen=True)
class OptimizeOutcome:
    """A tuning run, whether it was found in the database (`reused`) rather than searched now, and
    how many trials this call ran (`searched`; other workers on the same study may run more)."""

    run: Run
    reused: bool
    searched: int = 0


def find_tuned_run(request: TuningRequest, store: Store, *, measured: bool = False) -> Run | None:
    """The stored complete run that answered this very request, found without loading any model
    code; None when there is none (or, with `measured`, when its maps were never timed)."""
    run = store.find_requested_run(request_key(request))
    if run is None or run.winner is None or (measured and not run.measured):
        return None
    # measured again since (`tuner profile --force`): the run's predictions are stale
    return run if priced_from_stored_profile(run, store) else None


def optimize(
    request: TuningRequest,
    settings: SearchSettings | None = None,
    *,
    db: str | Store | None = None,
    listener: OptimizeListener | None = None,
) -> OptimizeOutcome:
    """Find the fastest device map of the request's model that fits, and keep the run.

    Every argument is checked against the model and the hardware before the database is opened
    or anything is measured: a wrong one leaves the database as it was.

    Raises:
        ConstraintError, WorkloadError, ModelSourceError: a bad argument.
        InfeasibleError: no map fits, even with every unit on disk.
        RunNotFoundError: `settings.resume` names no run.
        RunInterrupted: Ctrl-C (or SIGTERM turned into it); the run keeps its trials.
    """
    from storage import opened

    settings = settings or SearchSettings()
    listener = listener or OptimizeListener()
    prepared = prepare(request)
    check_measurable(settings.measure, settings.measure_rounds, request.hardware, prepared.source)
    with opened(db) as store:
        store.check_writable()  # a read-only database is found out before the work, not after
        outcome = _optimize(prepared, settings, store, listener)
        if outcome.run.status is RunStatus.COMPLETE:
            store.remember_request(request_key(request), outcome.run.id)
    listener.finished(outcome.run, reused=outcome.reused, searched=outcome.searched)
    return outcome


def tune_queued(
    *,
    db: str | Store | None = None,
    listener: OptimizeListener | None = None,
    join: bool = True,
    trust_remote_code: bool = False,
) -> Run | None:
    """Take the oldest run of the queue that no process works on (`Store.claim_queued_run`) and
    tune it: a queued run is prepared, filled in (`Store.adopt_run`) and searched; one whose
    worker died or was stopped is resumed, joining its study. A request that cannot be tuned (a
    model the worker cannot read, no map that fits) marks the run failed, with why.

    With `join`, when no run waits, join the search of the oldest run other workers are tuning
    whose study still has trials to start (`_join`): the workers share its trial budget, and the
    last of them to end completes the run. A run this worker cannot prepare is left to them.

    A run with a time limit (`Run.requested_timeout_s`) is searched until its deadline, which
    the first worker to search it fixes: every worker of the run stops then.

    Args:
        trust_remote_code: run the code a model's repository ships (`from_pretrained`'s flag)
            for every run this worker takes. The worker's own choice, never the request's: a
            request names any model, and its code would run here.

    Returns:
        The run as it ended (complete or failed); None when no run waits, or when this worker
        joined a run but ran none of its trials (the others had started them all).

    Raises:
        RunInterrupted: Ctrl-C (or SIGTERM turned into it); the run keeps its trials and is
            interrupted, for this or another worker to resume (a joined run: left to its other
            workers).
    """
    from storage import opened

    listener = listener or OptimizeListener()
    with opened(db) as store:
        claimed = store.claim_queued_run()
        joined = claimed is None and join
        if joined:
            claimed = _join(store)
        if claimed is None:
            return None
        run, abandoned = claimed
        listener.claimed(run, joined=joined)
        try:
            request = TuningRequest.from_arguments(
                run.model_name,
                hardware=run.hardware_name,
                batch=run.workload.batch,
                seq=run.workload.seq,
                new_tokens=run.workload.new_tokens,
                dtype=run.workload.dtype,
                max_memory=run.max_memory,
                pins=dict(run.pins),
                exclude=run.exclude,
                trust_remote_code=trust_remote_code,
            )
            settings = SearchSettings(trials=run.requested_trials or 0)
            # Renewed from the start: preparing and profiling a real model outlast a lease.
            with _Lease(store, run.id):
                prepared = prepare(request)
            queued = _Claim(run, abandoned=abandoned, existed=bool(run.key))
            outcome = _optimize(prepared, settings, store, listener, queued=queued)
        except RunInterrupted as stop:
            if stop.run_id is None and not joined:  # stopped before its search began: queued again
                _requeue(store, run)
            raise RunInterrupted(run.id, trials=stop.trials) from stop
        except KeyboardInterrupt as stop:  # while preparing
            if not joined:
                _requeue(store, run)
            raise RunInterrupted(run.id, trials=run.trials) from stop
        except Exception as error:  # a request that crashes a worker must not crash every worker in turn
            if joined:  # its other workers read the model: this machine may not
                return None
            reason = (
                str(error) if isinstance(error, TunerError) else f"unexpected {type(error).__name__}: {error}"
            )
            store.fail_run(run.id, reason)
            return store.get_run(run.id)
        store.remember_request(request_key(request), outcome.run.id)
    listener.finished(outcome.run, reused=outcome.reused, searched=outcome.searched)
    # A worker that joined too late to run a trial did nothing to report.
    return None if joined and not outcome.searched else outcome.run


def _join(store: Store) -> tuple[Run, bool] | None:
    """The oldest run of the queue that other workers search now and whose study has trials left
    to start, taken up by this process too (`Store.claim_run`); None when there is none."""
    from tuner.plan.search import trials_left

    database = _database(store)
    for run in store.find_joinable_runs():
        if store.search_seconds_left(run.id) == 0:
            continue  # its time is up: its workers are ending it
        if trials_left(database, run.study_name, run.requested_trials or 0) > 0:
            taken, abandoned = store.claim_run(run.id)
            if taken.status is not RunStatus.COMPLETE:  # else its last worker completed it meanwhile
                return taken, abandoned
    return None


def _requeue(store: Store, run: Run) -> None:
    """Leave a run of the queue interrupted, as it was before this process took it, for the next
    worker: its trials and best map so far kept."""
    store.finish_run(
        run.id,
        status=RunStatus.INTERRUPTED,
        winner=run.winner,
        trials=run.trials,
        phase_seconds=run.phase_seconds,
    )


def _optimize(
    prepared: Prepared,
    settings: SearchSettings,
    store: Store,
    listener: OptimizeListener,
    *,
    queued: _Claim | None = None,
) -> OptimizeOutcome:
    """`optimize` on an open store; `queued` is a run of the queue this process took, searched
    whatever else is stored."""
    if prepared.seq_note:
        listener.note(prepared.seq_note)
    prepared = priced_from(prepared, store)  # a newer profile of the model is another run
    previous = None
    if queued is None:
        previous = _previous_run(store, prepared, force=settings.force, resume=settings.resume)
    if previous is not None and previous.status is RunStatus.COMPLETE:
        return _reuse(prepared, settings, store, previous, listener)

    started = time.perf_counter()
    # A run of the queue is this process's from the start; its search renews its lease after.
    renewing = _Lease(store, queued.run.id) if queued is not None else contextlib.nullcontext()
    try:
        with renewing:
            # --force measures afresh too: a stored profile taken on a busy machine is not reused
            hardware = planning_hardware(prepared, store, listener, force=settings.force)
            calibration = (
                learned_calibration(hardware, store, listener) if prepared.request.calibrate else None
            )
            listener.phase("profiling")
            cost_model = build_cost_model(
                prepared,
                hardware,
                store,
                repeats=settings.repeats,
                listener=listener,
                force=settings.force,
                calibration=calibration,
            )
            prepared = priced_from(prepared, store)  # the profile just measured, when none was stored
            phase_seconds = {"profile": time.perf_counter() - started}

            listener.phase("planning accelerate's maps")
            mark = time.perf_counter()
            baselines = priced_baselines(prepared, cost_model, listener)
            phase_seconds["baselines"] = time.perf_counter() - mark

            from tuner.plan.diagnose import why_nothing_fits
            from tuner.plan.exact import solve

            listener.phase("exact optimum")
            mark = time.perf_counter()
            exact = solve(cost_model, pins=prepared.pins, exclude=prepared.excluded)
            phase_seconds["exact"] = time.perf_counter() - mark
    except KeyboardInterrupt as exc:
        raise RunInterrupted(None) from exc
    if exact is None:
        raise InfeasibleError(why_nothing_fits(cost_model, prepared.excluded, prepared.pins))
    # past the solver's time limit its best map, with the bound it proved (None: the optimum)
    bound = exact.lower_bound_s
    baselines.append(Candidate("exact", exact.device_map, exact.prediction, lower_bound_s=bound))

    with _Interrupts() as interrupts:
        try:
            if queued is None:
                claim = _claim(prepared, settings, store, previous, baselines)
            else:
                claim = _claim_queued(prepared, store, queued, baselines)
        except KeyboardInterrupt as exc:
            raise RunInterrupted(None) from exc
        run = claim.run
        if run.requested_timeout_s is not None:  # a run of the queue: its deadline, set by now
            settings = replace(settings, timeout=store.search_seconds_left(run.id))
        searched = None
        if run.status is not RunStatus.COMPLETE:  # else another process completed it meanwhile
            searched = _search_and_store(
                cost_model,
                store,
                run,
                baselines,
                settings,
                resumed=claim.existed,
                abandoned=claim.abandoned,
                pins=prepared.pins,
                exclude=prepared.excluded,
                phase_seconds=phase_seconds,
                listener=listener,
                interrupts=interrupts,
            )
    if searched is None:
        return _reuse(prepared, settings, store, run, listener)
    if not settings.measure:
        return searched
    return OptimizeOutcome(_measure(prepared, settings, store, searched.run, listener), reused=False)


def _reuse(
    prepared: Prepared, settings: SearchSettings, store: Store, run: Run, listener: OptimizeListener
) -> OptimizeOutcome:
    asked = prepared.request.model
    if run.model_name != asked:  # `validate latest` would load the other folder
        listener.note(
            f"run {run.id} answers: it was tuned for {run.model_name}, whose config and weights are "
            f"{asked}'s; tuner validate {run.id} {asked} loads its map from {asked}"
        )
    if settings.trials > run.trials and settings.timeout is None:  # with one, fewer trials may be its doing
        listener.note(
            f"run {run.id} answers with the {run.trials} trials it searched ({settings.trials} asked now); "
            "--force searches again"
        )
    if run.hardware_name == THIS_MACHINE:
        profile = store.find_profile(run.model_fingerprint, run.hardware_fingerprint, run.workload)
        if profile is not None and profile.busy:  # as the profile's own note says when it is measured
            listener.note(
                f"run {run.id} was priced from a profile measured while the machine was busy "
                f"({profile.busy}): its times may be many times this machine's; --force measures again"
            )
    if settings.measure and not run.measured:
        run = _measure(prepared, settings, store, run, listener)
    elif settings.measure:
        listener.note(
            f"run {run.id} answers with the maps it measured before, not {settings.measure} measured now; "
            "--force searches and measures again"
        )
    return OptimizeOutcome(run, reused=True)


def _claim(
    prepared: Prepared,
    settings: SearchSettings,
    store: Store,
    previous: Run | None,
    baselines: list[Candidate],
) -> _Claim:
    """The run this process searches: the one `--resume` named, else (unless `force`) the
    request's complete run to reuse, or its unfinished run to resume or join, else a new run with
    its study. Under the database's lock, so that processes making the same request at once make
    one run."""
    if previous is not None:
        return _Claim(*store.claim_run(previous.id), existed=True)
    with store.exclusive():
        if not settings.force:
            complete = store.find_complete_run(prepared.key)
            if complete is not None:
                return _Claim(complete, abandoned=False, existed=True)
            unfinished = store.find_unfinished_run(prepared.key)
            if unfinished is not None:
                return _Claim(*store.claim_run(unfinished.id), existed=True)
        from tuner.plan.search import create_study

        run = _new_run(prepared, baselines)
        # The study exists before the run does: a worker that finds the run running joins it.
        create_study(_database(store), run.study_name)
        return _Claim(replace(run, id=store.create_run(run)), abandoned=False, existed=False)


def _claim_queued(prepared: Prepared, store: Store, queued: _Claim, baselines: list[Candidate]) -> _Claim:
    """The run of the queue this process took: filled in (with its study) the first time a
    worker prepares it, else as it is, to resume."""
    run = queued.run
    if run.key:
        if run.key != prepared.key:
            raise ConstraintError(
                f"run {run.id} was prepared from another model or hardware than its request names now "
                "(edited files?); ask for it again"
            )
        return queued
    from tuner.plan.search import create_study

    create_study(_database(store), run.study_name)  # made already when a worker died after this
    filled = replace(
        _new_run(prepared, baselines),
        id=run.id,
        study_name=run.study_name,
        created_at=run.created_at,
        requested_trials=run.requested_trials,
    )
    store.adopt_run(filled)
    return _Claim(store.get_run(run.id), abandoned=False, existed=False)


@dataclass(frozen=True)
class _Claim:
    """The run a process works on; whether it existed (resumed, joined, or complete already);
    whether it was abandoned (no process renewed its lease: whatever it left running is dead)."""

    run: Run
    abandoned: bool
    existed: bool


def _measure(
    prepared: Prepared, settings: SearchSettings, store: Store, run: Run, listener: OptimizeListener
) -> Run:
    try:
        return measure_run(
            prepared.request.model,
            prepared.meta,
            store,
            run,
            best=settings.measure,
            rounds=settings.measure_rounds,
            trust_remote_code=prepared.request.trust_remote_code,
            listener=listener,
        )
    except KeyboardInterrupt as exc:
        raise RunInterrupted(run.id, trials=run.trials, measuring=True) from exc


def _new_run(prepared: Prepared, baselines: Sequence[Candidate]) -> Run:
    request = prepared.request
    return Run(
        id=0,
        key=prepared.key,
        model_name=request.model,
        model_fingerprint=prepared.meta.fingerprint(),
        hardware_name=prepared.hardware_name,
        hardware_fingerprint=prepared.hardware.fingerprint,
        workload=prepared.workload,
        inputs=prepared.inputs,
        max_memory=dict(request.max_memory),
        pins=tuple(sorted(request.pins.items())),
        exclude=tuple(sorted(request.exclude)),
        # Unique even for runs of one key created in the same second (`--force`).
        study_name=f"tuner-{prepared.key}-{int(time.time())}-{secrets.token_hex(4)}",
        status=RunStatus.RUNNING,
        baselines=tuple(baselines),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _search_and_store(
    cost_model: CostModel,
    store: Store,
    run: Run,
    baselines: list[Candidate],
    settings: SearchSettings,
    *,
    resumed: bool,
    abandoned: bool,
    pins: dict[str, str],
    exclude: set[str],
    phase_seconds: dict[str, float],
    listener: OptimizeListener,
    interrupts: _Interrupts,
) -> OptimizeOutcome:
    """Run the study until it holds `settings.trials` complete trials, storing them as they
    finish; an interrupt keeps them and marks the run. A resumed run joins its study, whether it
    was interrupted or other workers are searching it now; the trials an abandoned run left
    running are failed first. Once its search ends, this process waits for the trials other
    workers still run (`_settled`), then stores every trial of the study (some a killed worker
    never stored) and completes the run."""
    from tuner.plan.search import SearchResult
    from tuner.plan.search import search

    pending: list[Candidate] = []
    finished: list[Candidate] = []

    def on_trial(candidate: Candidate) -> None:
        pending.append(candidate)
        finished.append(candidate)
        listener.trial_done(candidate)
        if len(pending) >= _TRIALS_PER_WRITE:
            store.add_candidates(run.id, pending, skip_stored=True)
            pending.clear()

    def interrupted(result: SearchResult | None) -> RunInterrupted:
        phase_seconds["search"] = time.perf_counter() - mark
        found = [] if result is None else list(result.study_candidates)
        trials = done + len(finished) if result is None else result.study_trials
        try:
            store.add_candidates(run.id, _by_name([*found, *pending]), skip_stored=True)
            if result is None:
                # the trials other workers of the run stored meanwhile count too (a process that
                # joined a run just started would say, and store, none)
                trials = max(trials, store.get_run(run.id).trials)
            store.finish_run(
                run.id,
                status=RunStatus.INTERRUPTED,
                winner=_best([*found, *finished, *(baselines if seed_search else [])]),
                trials=trials,
                phase_seconds=phase_seconds,
            )
        except StorageError as error:
            from storage import LEASE_SECONDS

            # The interrupt is what was asked for, and the trials are in the run's study already:
            # the run shows as interrupted once its lease runs out, and a resume stores them.
            listener.note(
                f"run {run.id} could not be marked interrupted now ({error}); it shows as interrupted "
                f"once its lease runs out ({LEASE_SECONDS:g} s), with the trials its study kept"
            )
        return RunInterrupted(run.id, trials=trials, asked=settings.trials)

    done = run.trials if resumed else 0
    seed_search = settings.seed_search and not resumed
    strategies = {c.name: c.device_map for c in baselines if c.name in STRATEGIES}
    seeds = [c.device_map for c in baselines] if seed_search else []
    remaining = max(0, settings.trials - done)
    if resumed:  # interrupted before, or searched by another process now: its trials count
        from tuner.plan.search import trials_left

        left = trials_left(_database(store), run.study_name, settings.trials)
        if not left:
            held = max(run.trials, settings.trials)
            listener.note(
                f"run {run.id} continues: it holds {held} trials, done or under way, and {settings.trials} "
                "are asked for: none is searched (a larger trials budget searches on)"
            )
        elif left < settings.trials:
            taken = settings.trials - left
            listener.note(
                f"run {run.id} continues: {taken} of its {settings.trials} trials done or under way"
            )
    listener.phase("searching")
    listener.searching(remaining)
    mark = time.perf_counter()
    try:
        with _Lease(store, run.id):
            settled: tuple[Candidate, ...] | None = None
            while True:
                spent = time.perf_counter() - mark
                result = search(
                    cost_model,
                    storage=_database(store),
                    study_name=run.study_name,
                    trials=remaining,
                    total=settings.trials,
                    timeout=None if settings.timeout is None else max(0.0, settings.timeout - spent),
                    strategies=strategies,
                    seeds=seeds,
                    pins=pins,
                    exclude=exclude,
                    seed=settings.random_seed,
                    on_trial=on_trial,
                    load_if_exists=True,  # created with the run, or another worker's
                    stop=interrupts.requested,
                    fail_running=abandoned and settled is None,
                )
                before = -1 if settled is None else len(settled)
                settled = _settled(cost_model, store, run, interrupts, listener)
                # The trial of a worker that died counts as spent until its heartbeat is old
                # enough to fail it, which may come while this worker waits for the others: its
                # place in the budget is then free again, and this worker runs it.
                if (
                    settled is None
                    or len(settled) >= settings.trials
                    or len(settled) <= before  # no progress: trials that cannot complete
                    or interrupts.requested()
                    or (settings.timeout is not None and time.perf_counter() - mark >= settings.timeout)
                ):
                    break
                remaining = settings.trials - len(settled)
    except KeyboardInterrupt as exc:
        raise interrupted(None) from exc
    if interrupts.requested():
        raise interrupted(result)
    phase_seconds["search"] = time.perf_counter() - mark
    everything = result.study_candidates if settled is None else settled
    store.add_candidates(run.id, _by_name([*everything, *pending]), skip_stored=True)
    store.complete_run(
        run.id,
        trials=max(result.study_trials, len(everything)),
        phase_seconds=phase_seconds,
        baselines_compete=seed_search or resumed,
    )
    return OptimizeOutcome(store.get_run(run.id), reused=False, searched=len(finished))


def _settled(
    cost_model: CostModel, store: Store, run: Run, interrupts: _Interrupts, listener: OptimizeListener
) -> tuple[Candidate, ...] | None:
    """Every complete trial of the run's study, once no other worker runs a trial of it (they
    share the budget: the last to end completes the run, with all of them); None when another
    worker completed the run meanwhile, on an interrupt, or after `_SETTLE_SECONDS` (a worker
    that hangs in a trial: its own `complete_run` then updates the winner). A wait longer than
    `_SETTLE_SAID_AFTER_SECONDS` is told to `listener`, with how long it may take."""
    from tuner.plan.search import settled_trials

    database = _database(store)
    start = time.monotonic()
    poll = _SETTLE_FIRST_POLL_SECONDS
    said = False
    while not interrupts.requested() and time.monotonic() < start + _SETTLE_SECONDS:
        found = settled_trials(cost_model, database, run.study_name)
        if found is not None:
            return found
        if store.get_run(run.id).status is RunStatus.COMPLETE:
            return None
        if not said and time.monotonic() - start >= _SETTLE_SAID_AFTER_SECONDS:
            said = True
            listener.note(
                f"waiting for the trials other workers of run {run.id} still run; the trial of a "
                f"worker that died is run again once it has not been heard of for "
                f"{database.grace_period} s"
            )
        time.sleep(poll)
        poll = min(poll * 2, _SETTLE_LONGEST_POLL_SECONDS)
    return None


def _database(store: Store) -> Database:
    """The store's database as Optuna's storage reaches it: set up and retried alike."""
    from storage import retrying
    from tuner.plan.search import Database

    return Database(store.url, store.engine_kwargs, retrying, lock=store.exclusive)


def _by_name(candidates: Sequence[Candidate]) -> list[Candidate]:
    """One candidate per name, the last given winning."""
    return list({candidate.name: candidate for candidate in candidates}.values())


class _Lease:
    """Renews a run's lease (`Store.renew_lease`) from a thread while this process works on it.

    A renewal that fails (the database busy past its retries) is skipped: the lease outlasts
    several missed renewals."""

    def __init__(self, store: Store, run_id: int) -> None:
        from storage import HEARTBEAT_SECONDS

        self._store = store
        self._run_id = run_id
        self._interval = HEARTBEAT_SECONDS
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"tuner-lease-{run_id}", daemon=True)

    def _renew(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._store.renew_lease(self._run_id)
            except TunerError:
                continue

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stopped.set()
        self._thread.join()


class _Interrupts:
    """Defers Ctrl-C and SIGTERM to the next trial boundary for the block: `requested` says one
    came, and the search stops after the trial that is running. A second one raises
    KeyboardInterrupt at once.

    Only signals whose handler raises KeyboardInterrupt are deferred (Python's for SIGINT, and the
    command line's, which says so with ``raises_keyboard_interrupt``); elsewhere, and outside the
    main thread, where Python runs no signal handler, nothing changes. An interrupt the command
    line's handler received before the block, which library code swallowed on its way (its
    ``received``), counts as the first one."""

    _NAMES = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self._count = 0
        self._previous: dict[int, signal.Handlers | object] = {}

    def requested(self) -> bool:
        """Whether an interrupt came since the block began."""
        return self._count > 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._count += 1
        # the command line's handler remembers which signal came, for its exit status
        previous = self._previous.get(signum)
        if getattr(previous, "received", False) is None:
            setattr(previous, "received", signum)  # noqa: B010 - a handler of another module
        if self._count > 1:
            raise KeyboardInterrupt

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in self._NAMES:
            number = getattr(signal, name, None)
            if number is None:
                continue
            handler = signal.getsignal(number)
            if handler is signal.default_int_handler or getattr(handler, "raises_keyboard_interrupt", False):
                self._previous[number] = signal.signal(number, self._handle)
                if getattr(handler, "received", None) is not None:
                    self._count = max(self._count, 1)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]


def _best(candidates: Sequence[Candidate]) -> Candidate | None:
    return min((c for c in candidates if c.feasible), key=predicted_latency, default=None)


def _previous_run(store: Store, prepared: Prepared, *, force: bool, resume: int | None) -> Run | None:
    """The run to reuse or continue: the one `resume` names, else a stored complete run."""
    key = prepared.key
    if resume is not None:
        run = store.get_run(resume)
        if run.status is RunStatus.FAILED:  # cancelled ones included: withdrawn for good
            raise ConstraintError(
                f"run {resume} failed ({run.error}): a failed run is not resumed; optimize without "
                "resume starts a new run"
            )
        if run.key != key and run.key.partition(".")[0] == key.partition(".")[0]:
            changed = (
                "the spec's figures, edited since"
                if prepared.hardware.source == "spec"
                else "a profile of the model that was measured again since"
            )
            raise ConstraintError(
                f"run {resume} was priced from {changed}; optimize without resume to search with the new one"
            )
        if run.key != key:
            raise ConstraintError(
                f"run {resume} was tuned with other settings ({_settings_changed(run, prepared)}); "
                "give the same arguments to resume it"
            )
        return run
    return None if force else store.find_complete_run(key)


def _settings_changed(run: Run, prepared: Prepared) -> str:
    """What differs between a stored run's request and this one: ``workload batch 1, seq 128, 32
    new tokens, float32 (now batch 1, seq 64, ...), max_memory``."""
    asked = _new_run(prepared, ())
    changed = [
        label
        for label, before, now in (
            ("model", run.model_fingerprint, asked.model_fingerprint),
            ("hardware", run.hardware_fingerprint, asked.hardware_fingerprint),
            ("workload", run.workload, asked.workload),
            ("max_memory", run.max_memory, asked.max_memory),
            ("pins", run.pins, asked.pins),
            ("exclude", run.exclude, asked.exclude),
        )
        if before != now
    ]
    if "workload" in changed:
        shown = f"workload {run.workload.describe(run.inputs)} (now {asked.workload.describe(asked.inputs)})"
        changed[changed.index("workload")] = shown
    return ", ".join(changed) or "its own maps to try or --calibrate"


def priced_baselines(
    prepared: Prepared, cost_model: CostModel, listener: OptimizeListener | None = None
) -> list[Candidate]:
    """accelerate's strategies (and ``auto`` planned under limits lowered until it fits, when it
    overruns them: `fitted_auto`), every single device that can compute, and the caller's own maps,
    each priced, with the request's pins and exclusions it breaks (`Candidate.breaks`). A strategy
    left out (transformers cannot plan it under these limits) is a note to `listener`."""
    from tuner.plan.baselines import accelerate_maps
    from tuner.plan.baselines import fitted_auto
    from tuner.plan.baselines import single_device_maps

    names = cost_model.graph.unit_names
    hardware = cost_model.hardware
    left_out: dict[str, list[str]] = {}  # why -> the strategies, one note each
    candidates = [
        *accelerate_maps(
            prepared.meta.model,
            names,
            hardware,
            prepared.request.max_memory,
            lambda strategy, why: left_out.setdefault(why, []).append(f"'{strategy}'"),
        ),
        *single_device_maps(names, hardware),
    ]
    if listener is not None:
        for why, strategies in left_out.items():
            maps = "map is" if len(strategies) == 1 else "maps are"
            listener.note(f"accelerate's {', '.join(strategies)} {maps} left out: {why}")
    priced = []
    for candidate in candidates:
        try:
            priced.append(replace(candidate, prediction=cost_model.predict(candidate.device_map)))
        except ValueError:
            continue  # a device with no profile (the cpu when GPUs are measured) computes nothing
    if any(c.name == "auto" and not c.feasible for c in priced):
        # what accelerate's auto takes to fit: the baseline on the same scale as the winner
        fitted = fitted_auto(
            prepared.meta.model, names, hardware, prepared.request.max_memory, cost_model.predict
        )
        if fitted is not None:
            priced.append(replace(fitted, prediction=cost_model.predict(fitted.device_map)))
    for number, dmap in enumerate(prepared.candidate_maps, start=1):
        # A caller's map is priced even when it cannot be (a device that computes nothing): it
        # then stands as infeasible, never silently dropped.
        try:
            prediction = cost_model.predict(dmap)
        except ValueError as exc:
            raise ConstraintError(f"candidates[{number - 1}] cannot be priced: {exc}") from None
        priced.append(Candidate(f"candidate {number}", dmap, prediction))
    # The user's exclusions only: what the quantizer refuses is not searched, but a map of it that
    # loads (bitsandbytes' whole model on cpu) was priced above, and one that does not was not.
    return [replace(c, breaks=prepared.broken_by(c.device_map)) for c in priced]
