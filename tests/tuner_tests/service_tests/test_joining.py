"""Several workers on one run of the queue: a worker that finds the queue empty joins the search
of a run another worker is tuning, the two share its trial budget, and the last to end completes
the run once, with the best of all their trials."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy

import tuner
from storage import Store
from tests.tuner_tests.conftest import FirstWorker
from tests.tuner_tests.conftest import Recorder
from tests.tuner_tests.conftest import SecondWorker
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
    joined = threading.Event()
    first, second = FirstWorker(joined, WAIT_S), SecondWorker(joined)
    ended: dict[str, Run | None] = {}
    errors: list[BaseException] = []

    def work(name: str, listener: Recorder) -> None:
        try:
            ended[name] = tuner.tune_queued(db=url, listener=listener)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
            joined.set()

    one = threading.Thread(target=work, args=("first", first))
    one.start()
    assert first.started.wait(WAIT_S), errors
    two = threading.Thread(target=work, args=("second", second))
    two.start()
    one.join(WAIT_S)
    two.join(WAIT_S)
    assert not errors, errors
    first_run, second_run = ended["first"], ended["second"]
    assert first_run is not None and second_run is not None and first_run.id == second_run.id
    return first_run, first, second


@pytest.mark.parametrize("database", [pytest.param("postgres_url", marks=pytest.mark.postgres), "db_url"])
def test_an_idle_worker_joins_a_running_run_and_they_share_its_trials(
    database: str, config_folder: Callable[[str], Path], request: pytest.FixtureRequest
) -> None:
    url = str(request.getfixturevalue(database))
    run, first, second = joined_run(str(config_folder("llama")), url)

    assert first.searched > 0 and second.searched > 0
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
