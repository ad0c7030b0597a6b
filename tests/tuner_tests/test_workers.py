"""Several workers on one run: a second `optimize --resume RUN` joins the study another worker is
searching on PostgreSQL, and the two share the --trials budget."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import tuner
from storage import Store
from tests.tuner_tests.conftest import FirstWorker
from tests.tuner_tests.conftest import Recorder
from tests.tuner_tests.conftest import SecondWorker
from tests.tuner_tests.conftest import tuned
from tuner.core.domain import RunStatus
from tuner.workflows import OptimizeOutcome

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("one_thread")]

TRIALS = 60
SETTINGS = dict(seq=8, new_tokens=2, repeats=1, trials=TRIALS, max_memory={"cpu": "1MiB"}, random_seed=0)
WAIT_S = 120


def test_a_second_worker_joins_the_run_and_they_share_the_trial_budget(
    config_folder: Callable[[str], Path], postgres_url: str
) -> None:
    folder = str(config_folder("llama"))
    # Measured once, so that neither worker measures.
    tuner.measure_hardware(db=postgres_url)
    tuner.profile(folder, seq=8, new_tokens=2, repeats=1, db=postgres_url)
    joined = threading.Event()
    first, second = FirstWorker(joined, WAIT_S), SecondWorker(joined)
    outcomes: dict[str, OptimizeOutcome] = {}
    errors: list[BaseException] = []

    def work(name: str, listener: Recorder, resume: int | None = None) -> None:
        try:
            outcomes[name] = tuned(folder, postgres_url, listener, resume=resume, **SETTINGS)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
            joined.set()

    one = threading.Thread(target=work, args=("first", first))
    one.start()
    assert first.started.wait(WAIT_S), errors
    with Store(postgres_url) as store:
        running = store.latest_run()
    assert running is not None and running.status is RunStatus.RUNNING
    two = threading.Thread(target=work, args=("second", second, running.id))
    two.start()
    one.join(WAIT_S)
    two.join(WAIT_S)
    assert not errors, errors

    assert outcomes["first"].searched > 0 and outcomes["second"].searched > 0
    # One budget: each worker stops once the study holds TRIALS complete trials, so together
    # they overshoot it by at most the trial each other worker had running.
    assert TRIALS <= outcomes["first"].searched + outcomes["second"].searched <= TRIALS + 1
    with Store(postgres_url) as store:
        run = store.get_run(running.id)
        candidates = store.list_candidates(run.id)
    assert run.status is RunStatus.COMPLETE and TRIALS <= run.trials <= TRIALS + 1
    trials = [c for c in candidates if c.trial is not None]
    assert len(trials) == len({c.trial for c in trials}) == run.trials  # every trial stored once
    feasible = [c for c in candidates if c.prediction is not None and c.prediction.feasible]
    assert run.winner is not None and run.winner.prediction is not None
    assert run.winner.prediction.latency_s == min(c.prediction.latency_s for c in feasible if c.prediction)
