"""Several workers on one run: a second `optimize --resume RUN` joins the study another worker is
searching on PostgreSQL, and the two share the --trials budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import tuner
from storage import Store
from tests.tuner_tests.conftest import Recorder
from tests.tuner_tests.conftest import tuned
from tests.tuner_tests.conftest import two_workers
from tuner.core.domain import RunStatus
from tuner.workflows import OptimizeOutcome

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("one_thread")]

TRIALS = 60
SETTINGS = dict(seq=8, new_tokens=2, repeats=1, trials=TRIALS, max_memory={"cpu": "1MiB"}, random_seed=0)
WAIT_S = 120


def test_a_second_worker_joins_the_run_and_they_share_the_trial_budget(
    config_folder: Callable[[str], Path], postgres_url: str, store_this_machine: Callable[[str], str]
) -> None:
    folder = str(config_folder("llama"))
    # Measured already, so that neither worker measures.
    store_this_machine(postgres_url)
    tuner.profile(folder, seq=8, new_tokens=2, repeats=1, db=postgres_url)

    def start(listener: Recorder) -> OptimizeOutcome:
        return tuned(folder, postgres_url, listener, **SETTINGS)

    def resume(listener: Recorder) -> OptimizeOutcome:
        with Store(postgres_url) as store:
            running = store.latest_run()
        assert running is not None and running.status is RunStatus.RUNNING
        return tuned(folder, postgres_url, listener, resume=running.id, **SETTINGS)

    first_outcome, second_outcome, _, _ = two_workers(start, resume, WAIT_S)

    assert first_outcome.searched > 0 and second_outcome.searched > 0
    # One budget: each worker stops once the study holds TRIALS complete trials, so together
    # they overshoot it by at most the trial each other worker had running.
    assert TRIALS <= first_outcome.searched + second_outcome.searched <= TRIALS + 1
    with Store(postgres_url) as store:
        run = store.get_run(second_outcome.run.id)  # the run the second worker resumed
        candidates = store.list_candidates(run.id)
    assert run.status is RunStatus.COMPLETE and TRIALS <= run.trials <= TRIALS + 1
    trials = [c for c in candidates if c.trial is not None]
    assert len(trials) == len({c.trial for c in trials}) == run.trials  # every trial stored once
    feasible = [c for c in candidates if c.prediction is not None and c.prediction.feasible]
    assert run.winner is not None and run.winner.prediction is not None
    assert run.winner.prediction.latency_s == min(c.prediction.latency_s for c in feasible if c.prediction)


def test_a_worker_waits_out_a_database_that_drops_its_connections(postgres_url: str) -> None:
    """The database restarts (every connection dropped, new ones refused for a while): an idle
    worker says so and tries again until it comes back, where it ended with the driver's error."""
    import subprocess
    import sys
    import time

    import psycopg

    from tests.conftest import POSTGRES_ADMIN_DSN

    name = postgres_url.rsplit("/", 1)[1]
    tuner.upgrade_database(postgres_url)
    worker = subprocess.Popen(
        [sys.executable, "-m", "tuner", "worker", "--poll", "0.2", "--db", postgres_url],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)  # started, and polling the empty queue
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            time.sleep(2)
            assert worker.poll() is None, worker.communicate()[1]
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        time.sleep(2)
        assert worker.poll() is None, worker.communicate()[1]
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=60)
    lines = err.splitlines()
    assert lines[-1] == "worker stopped", err
    waited = [line for line in lines if line.startswith("worker: ")]
    assert waited and all("; trying again in " in line for line in waited), err
