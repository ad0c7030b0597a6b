"""The search on a shared database: Optuna's calls retried while the database is busy, a search
stopped between trials, trials left RUNNING by dead workers failed, every trial of the study
returned, and no connection left open afterwards."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

import storage.session
from storage import Store
from storage import retrying
from tests.tuner_tests.plan_tests.test_search import toy
from tuner.plan.search import Database
from tuner.plan.search import search
from tuner.plan.search import settled_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    """A tuner database (a SQLite file) as the workflows hand it to the search."""
    with Store(f"sqlite:///{tmp_path / 'tuner.db'}") as store:
        yield Database(store.url, store.engine_kwargs, retrying, lock=store.exclusive)


def states(database: Database, study_name: str) -> list[optuna.trial.TrialState]:
    return [trial.state for trial in optuna.load_study(study_name=study_name, storage=database.url).trials]


def test_a_stop_request_ends_the_search_after_the_running_trial(database: Database) -> None:
    finished: list[int] = []

    def stop() -> bool:
        return len(finished) >= 3

    result = search(
        toy(),
        storage=database,
        study_name="s",
        trials=50,
        seed=0,
        on_trial=lambda c: finished.append(1),
        stop=stop,
    )
    assert len(result.candidates) == 3 and result.study_trials == 3
    assert states(database, "s") == [optuna.trial.TrialState.COMPLETE] * 3  # nothing left running

    # Asked before the first trial: none runs.
    result = search(
        toy(), storage=database, study_name="s", trials=50, load_if_exists=True, stop=lambda: True
    )
    assert result.candidates == () and result.study_trials == 3


def test_every_complete_trial_of_the_study_is_returned_whichever_worker_ran_it(database: Database) -> None:
    model = toy()
    first = search(model, storage=database, study_name="s", trials=4, seed=0)
    second = search(model, storage=database, study_name="s", trials=3, seed=1, load_if_exists=True)
    assert [c.trial for c in second.candidates] == [4, 5, 6]
    assert [c.trial for c in second.study_candidates] == list(range(7))
    assert second.study_candidates[:4] == first.candidates  # priced alike, named alike
    assert second.study_trials == 7


def test_trials_of_dead_workers_are_failed_and_never_count(database: Database) -> None:
    model = toy()
    search(model, storage=database, study_name="s", trials=2, seed=0)
    # A worker that died in the middle of a trial: RUNNING for good.
    optuna.load_study(study_name="s", storage=database.url).ask()
    assert states(database, "s")[-1] is optuna.trial.TrialState.RUNNING

    result = search(model, storage=database, study_name="s", trials=3, load_if_exists=True, total=5,
                    fail_running=True)  # fmt: skip
    assert states(database, "s")[2] is optuna.trial.TrialState.FAIL
    assert result.study_trials == 5 and len(result.candidates) == 3


def test_a_trial_whose_heartbeat_aged_past_the_grace_period_is_failed_by_the_next_worker(
    database: Database,
) -> None:
    quick = Database(database.url, database.engine_kwargs, retrying, heartbeat_interval=1, grace_period=1)
    search(toy(), storage=quick, study_name="s", trials=1, seed=0)
    study = optuna.load_study(study_name="s", storage=database.url)
    dead = study.ask()
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        beating = optuna.storages.RDBStorage(database.url, heartbeat_interval=1, grace_period=1)
    beating.record_heartbeat(dead._trial_id)
    beating.engine.dispose()
    time.sleep(2.5)

    search(toy(), storage=quick, study_name="s", trials=1, load_if_exists=True)
    assert states(database, "s") == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.COMPLETE,
    ]


def test_optuna_calls_refused_as_busy_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tuner.db"
    # SQLite gives up waiting for a lock after 50 ms; another connection holds the write lock for
    # longer while the search starts, so only the retries get its calls through.
    monkeypatch.setattr(storage.session, "BUSY_TIMEOUT_S", 0.05)
    with Store(f"sqlite:///{path}") as store:
        database = Database(store.url, store.engine_kwargs, retrying)
    search(toy(), storage=database, study_name="s", trials=1, seed=0)
    taken = threading.Event()
    released = threading.Event()

    def hold(seconds: float) -> None:
        """Hold the write lock for `seconds`, or until `released` is set."""
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        taken.set()
        released.wait(seconds)
        holder.execute("COMMIT")
        holder.close()

    holder = threading.Thread(target=hold, args=(0.6,))
    holder.start()
    assert taken.wait(10)
    try:
        result = search(toy(), storage=database, study_name="s", trials=3, load_if_exists=True)
    finally:
        holder.join()
    assert result.study_trials == 4

    # Without retries the lock is held until the search gives up: however slowly it starts (a
    # loaded machine), its first write is refused.
    once = Database(database.url, database.engine_kwargs)  # no retries
    holder = threading.Thread(target=hold, args=(60,))
    taken.clear()
    holder.start()
    assert taken.wait(10)
    try:
        with pytest.raises(optuna.exceptions.StorageInternalError) as refused:
            search(toy(), storage=once, study_name="s", trials=3, load_if_exists=True)
    finally:
        released.set()
        holder.join()
    assert storage.session.is_transient(refused.value)  # "database is locked", its cause


def test_the_search_leaves_no_connection_open(tmp_path: Path) -> None:
    """The last connection to a WAL database removes its -wal file when it closes."""
    path = tmp_path / "tuner.db"
    with Store(f"sqlite:///{path}") as store:
        database = Database(store.url, store.engine_kwargs, retrying)
    search(toy(), storage=database, study_name="s", trials=2, seed=0)
    assert path.exists() and not path.with_name(f"{path.name}-wal").exists()


def test_workers_opening_a_database_without_optuna_s_tables_at_once_all_get_in(database: Database) -> None:
    """Optuna checks for its tables, then creates them: without the database's lock, workers
    doing it at once collide ("table ... already exists")."""
    workers = 6
    ready = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work(number: int) -> None:
        ready.wait()
        try:
            search(toy(), storage=database, study_name=f"s{number}", trials=1, seed=0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(number,)) for number in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(optuna.get_all_study_names(storage=database.url)) == workers


def test_a_trial_a_worker_left_without_any_heartbeat_is_failed_once_the_grace_period_passes(
    database: Database,
) -> None:
    """Killed after its trial started and before its heartbeat thread recorded once: Optuna's own
    check skips such a trial for good, and the run waited on it."""
    quick = Database(database.url, database.engine_kwargs, retrying, heartbeat_interval=1, grace_period=1)
    model = toy()
    search(model, storage=quick, study_name="s", trials=1, seed=0)
    optuna.load_study(study_name="s", storage=database.url).ask()  # RUNNING, no heartbeat
    assert settled_trials(model, quick, "s") is None  # it may still be starting: waited for
    time.sleep(2.5)
    settled = settled_trials(model, quick, "s")
    assert settled is not None and [candidate.trial for candidate in settled] == [0]
    assert states(database, "s") == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]


def test_a_live_workers_trial_is_not_failed_for_want_of_a_heartbeat(database: Database) -> None:
    """A trial just started, before its heartbeat thread records: within the grace period it is
    waited for, however often it is looked at (failing every trial without a heartbeat at once
    would fail it)."""
    model = toy()
    search(model, storage=database, study_name="s", trials=1, seed=0)
    optuna.load_study(study_name="s", storage=database.url).ask()
    for _ in range(3):  # within the grace period (120 s), however often it is looked at
        assert settled_trials(model, database, "s") is None
    assert states(database, "s")[-1] is optuna.trial.TrialState.RUNNING
