"""Workers sharing one study run exactly its trial budget, however their trials interleave."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from storage import Store
from storage import retrying
from tests.tuner_tests.plan_tests.test_search import toy
from tuner.plan.search import Database
from tuner.plan.search import search

TOTAL = 5  # odd: two workers in lockstep both start the last trial


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    with Store(f"sqlite:///{tmp_path / 'tuner.db'}") as store:
        yield Database(store.url, store.engine_kwargs, retrying, lock=store.exclusive)


def test_two_workers_in_lockstep_run_exactly_the_budget(database: Database) -> None:
    """Each worker waits for the other at the end of every trial, so both always have a trial
    running when the budget is one short: counting complete trials alone overshoots it."""
    model = toy()
    search(model, storage=database, study_name="s", trials=0)  # the study, before either joins
    lockstep = threading.Barrier(2)
    searched: list[int] = []
    errors: list[BaseException] = []

    def wait_for_the_other(_: object) -> None:
        try:
            lockstep.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass  # the other worker is done

    def work(seed: int) -> None:
        try:
            result = search(
                model, storage=database, study_name="s", trials=TOTAL, seed=seed, load_if_exists=True,
                total=TOTAL, on_trial=wait_for_the_other,
            )  # fmt: skip
            searched.append(len(result.candidates))
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
        finally:
            lockstep.abort()

    workers = [threading.Thread(target=work, args=(seed,)) for seed in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors, errors
    study = optuna.load_study(study_name="s", storage=database.url)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == sum(searched) == TOTAL
    assert all(t.state is not optuna.trial.TrialState.RUNNING for t in study.trials)
