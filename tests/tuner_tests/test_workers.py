"""Several workers on one run: a second `optimize --resume RUN` joins the study another worker is
searching on PostgreSQL, and the two share the --trials budget."""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from collections.abc import Iterator
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


@contextlib.contextmanager
def worker_saying(postgres_url: str) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """`tuner worker` on the database, as a process, and the lines it says on stderr as they come;
    stopped with SIGTERM at the end."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "tuner", "worker", "--poll", "0.2", "--db", postgres_url],
        stderr=subprocess.PIPE,
        text=True,
    )
    stream = worker.stderr
    assert stream is not None
    said: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [said.put(line.rstrip("\n")) for line in stream], daemon=True)
    reader.start()
    try:
        yield worker, said
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        reader.join(timeout=60)


@contextlib.contextmanager
def database_cut_off(postgres_url: str) -> Iterator[None]:
    """The database as a restart leaves it: every connection dropped and new ones refused, until
    the block ends."""
    import psycopg

    from tests.conftest import POSTGRES_ADMIN_DSN

    name = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_a_worker_waits_out_a_database_that_drops_its_connections(postgres_url: str) -> None:
    """The database restarts (every connection dropped, new ones refused for a while): an idle
    worker says so and tries again until it comes back, says that too, and goes on, where it
    ended with the driver's error."""
    url = tuner.database_url(postgres_url)
    tuner.upgrade_database(postgres_url)
    with worker_saying(postgres_url) as (worker, said):
        # Each step waits for the worker to say it took it, however slowly a loaded machine runs.
        assert said.get(timeout=WAIT_S) == f"worker taking queued runs from {url} (Ctrl-C stops)"
        with database_cut_off(postgres_url):
            refused = said.get(timeout=WAIT_S)
            assert refused.startswith("worker: ") and "; trying again in " in refused, refused
            assert worker.poll() is None
        while (line := said.get(timeout=WAIT_S)) != f"worker: {url} answers again":
            assert line.startswith("worker: ") and "; trying again in " in line, line
        assert worker.poll() is None
    assert list(said.queue) == ["worker stopped"]


def test_a_worker_that_loses_the_database_mid_run_names_the_run_it_leaves(
    config_folder: Callable[[str], Path], postgres_url: str
) -> None:
    """The database goes away while the worker tunes a run: the worker says which run it leaves
    to be resumed, not the driver's error alone."""
    queued = tuner.queue_run(
        str(config_folder("llama")), hardware="1xA10G-24GB", dtype="float32", seq=8, new_tokens=2,
        trials=100_000, db=postgres_url,
    )  # fmt: skip
    with worker_saying(postgres_url) as (_, said):
        while not (line := said.get(timeout=WAIT_S)).startswith(f"run {queued.id}: tuning "):
            assert line.startswith("worker taking queued runs"), line
        with database_cut_off(postgres_url):
            while not (line := said.get(timeout=WAIT_S)).startswith("worker: "):
                pass  # the search's own lines, until the worker meets the dropped connection
            assert line.startswith(f"worker: run {queued.id} left to resume when its lease expires: "), line
            assert "; trying again in " in line
