"""Several workers on one run of the queue: a worker that finds the queue empty joins the search
of a run another worker is tuning, the two share its trial budget, and the last to end completes
the run once, with the best of all their trials."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import sqlalchemy

import tuner
from storage import Store
from tests.tuner_tests.conftest import FirstWorker
from tests.tuner_tests.conftest import Recorder
from tests.tuner_tests.conftest import two_workers
from tests.tuner_tests.service_tests.conftest import SPEC
from tuner.core.domain import Run
from tuner.core.domain import RunStatus

pytestmark = [pytest.mark.usefixtures("one_thread")]

TRIALS = 60
WAIT_S = 300


def study_trials(url: str, state: str) -> int:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            statement = sqlalchemy.text("SELECT count(*) FROM trials WHERE state = :state")
            return int(connection.execute(statement, {"state": state}).scalar_one())
    finally:
        engine.dispose()


def joined_run(
    folder: str, url: str, trials: int = TRIALS, timeout: float | None = None
) -> tuple[Run, Recorder, Recorder]:
    """A request tuned by two workers, the second joining the first's search."""
    tuner.queue_run(
        folder, hardware=SPEC, dtype="float32", seq=8, new_tokens=2, trials=trials, timeout=timeout, db=url
    )

    def work(listener: Recorder) -> Run | None:
        return tuner.tune_queued(db=url, listener=listener)

    first_run, second_run, first, second = two_workers(work, work, WAIT_S)
    assert first_run is not None and second_run is not None and first_run.id == second_run.id
    return first_run, first, second


@pytest.mark.parametrize("database", [pytest.param("postgres_url", marks=pytest.mark.postgres), "db_url"])
def test_an_idle_worker_joins_a_running_run_and_they_share_its_trials(
    database: str, config_folder: Callable[[str], Path], request: pytest.FixtureRequest
) -> None:
    url = str(request.getfixturevalue(database))
    run, first, second = joined_run(str(config_folder("llama")), url)

    assert first.searched > 0 and second.searched > 0
    assert (first.claims, second.claims) == (((run.id, False),), ((run.id, True),))  # as the listener is told
    # One budget, spent exactly: every trial of the study ran in one of the two workers.
    assert first.searched + second.searched == TRIALS == study_trials(url, "COMPLETE")
    assert study_trials(url, "RUNNING") == 0
    with Store(url) as opened:
        stored = opened.get_run(run.id)
        candidates = opened.list_candidates(run.id)
        assert opened.list_runs(limit=10) == [stored]  # joining made no other run
    assert stored.status is RunStatus.COMPLETE and stored.trials == TRIALS
    trials = [c for c in candidates if c.trial is not None]
    assert len(trials) == len({c.trial for c in trials}) == TRIALS  # every trial stored once
    # One winner: the best of both workers' trials and the seeds, as each worker returned it.
    feasible = [
        c.prediction.latency_s for c in candidates if c.prediction is not None and c.prediction.feasible
    ]
    assert stored.winner is not None and stored.winner.prediction is not None
    assert stored.winner.prediction.latency_s == min(feasible)
    assert run.winner == stored.winner
    # Nothing left to join: the next idle worker finds nothing to do.
    assert tuner.tune_queued(db=url) is None


@pytest.mark.postgres
@pytest.mark.slow
def test_workers_that_joined_a_run_stop_at_its_deadline_together(
    config_folder: Callable[[str], Path], postgres_url: str
) -> None:
    # Far more trials than two workers run before the deadline; long enough for the second
    # worker to prepare the model and join on a busy machine.
    trials = 1_000_000
    run, first, second = joined_run(str(config_folder("llama")), postgres_url, trials=trials, timeout=30)

    assert first.searched > 0 and second.searched > 0
    assert first.searched + second.searched == study_trials(postgres_url, "COMPLETE") < trials
    with Store(postgres_url) as opened:
        stored = opened.get_run(run.id)
        assert opened.search_seconds_left(run.id) == 0
    assert stored.status is RunStatus.COMPLETE and stored.trials == first.searched + second.searched
    assert run.winner == stored.winner


def _age_heartbeat(url: str, trial_id: int) -> None:
    """Make a trial's Optuna heartbeat an hour old, as a worker that died an hour ago left it."""
    older = (
        "heartbeat - interval '1 hour'" if url.startswith("postgresql") else "datetime(heartbeat, '-1 hour')"
    )
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            statement = f"UPDATE trial_heartbeats SET heartbeat = {older} WHERE trial_id = :id"
            assert connection.execute(sqlalchemy.text(statement), {"id": trial_id}).rowcount == 1
    finally:
        engine.dispose()


# The dead worker's trial is made by hand, with Optuna's heartbeat, outside `Study.optimize`.
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage")
@pytest.mark.parametrize("database", [pytest.param("postgres_url", marks=pytest.mark.postgres), "db_url"])
def test_the_trial_of_a_worker_that_died_is_run_again_within_the_budget(
    database: str, config_folder: Callable[[str], Path], request: pytest.FixtureRequest
) -> None:
    """A worker died in a trial of the run: its trial counts as spent until its heartbeat is old
    enough to fail it. If that comes only after the search of the worker still there ended (it
    waits for that trial before it completes the run), that worker runs the trial's place in the
    budget, and the run still holds exactly its trials."""
    url = str(request.getfixturevalue(database))
    trials = 20
    queued = tuner.queue_run(
        str(config_folder("llama")),
        hardware=SPEC,
        dtype="float32",
        seq=8,
        new_tokens=2,
        trials=trials,
        db=url,
    )
    held = threading.Event()
    worker = FirstWorker(held, WAIT_S)
    ended: list[Run | None] = []
    raised: list[BaseException] = []

    def work() -> None:
        try:
            ended.append(tuner.tune_queued(db=url, listener=worker))
        except BaseException as error:
            raised.append(error)
            raise

    working = threading.Thread(target=work)
    working.start()
    try:
        # Made while the worker is held between trials: it then asks for no trial at once.
        assert worker.holding.wait(WAIT_S)
        # The dead worker's trial, its heartbeat fresh: a moment ago, it was alive. A new trial,
        # where `Study.ask` would take a seed the worker enqueued (and may be running itself).
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=5, grace_period=120)
        dead_id = storage.create_new_trial(storage.get_study_id_from_name(queued.study_name))
        storage.record_heartbeat(dead_id)
    finally:
        held.set()
    # The search ends once the dead trial and the others fill the budget: the next is pruned.
    study = optuna.load_study(study_name=queued.study_name, storage=storage)
    deadline = time.monotonic() + WAIT_S
    while not study.get_trials(states=(optuna.trial.TrialState.PRUNED,)):
        states = [trial.state.name for trial in study.get_trials()]
        assert working.is_alive(), (
            f"the worker ended before the budget was spent: {raised or ended}, {states}"
        )
        assert time.monotonic() < deadline, states
        time.sleep(0.1)
    # The worker still there waits for the dead trial, and says so
    said = (
        f"waiting for the trials other workers of run {queued.id} still run; the trial of a worker that died"
    )
    while not any(note.startswith(said) for note in worker.notes):
        assert working.is_alive() and time.monotonic() < deadline, worker.notes
        time.sleep(0.1)
    _age_heartbeat(url, dead_id)
    working.join(WAIT_S)
    storage.remove_session()
    storage.engine.dispose()

    assert ended and ended[0] is not None and ended[0].status is RunStatus.COMPLETE
    assert ended[0].trials == trials == worker.searched == study_trials(url, "COMPLETE")
    assert study_trials(url, "FAIL") == 1 and study_trials(url, "RUNNING") == 0
