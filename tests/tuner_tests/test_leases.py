"""A run's lease while `optimize` works on it: renewed from a thread during the search, so that the
run reads as running however long the search takes, and as interrupted once its process is gone."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy

import storage
from storage import Store
from tests.tuner_tests.conftest import Recorder
from tests.tuner_tests.conftest import tuned
from tuner.core.domain import Candidate
from tuner.core.domain import RunStatus

pytestmark = pytest.mark.usefixtures("one_thread")


def heartbeat(db: str) -> object:
    engine = sqlalchemy.create_engine(db)
    try:
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text("SELECT heartbeat_at FROM runs")).scalar_one()
    finally:
        engine.dispose()


class _SlowTrial(Recorder):
    """Holds the first trial long enough for several renewals, noting the lease before and after."""

    def __init__(self, db: str, hold_s: float) -> None:
        self.db = db
        self.hold_s = hold_s
        self.seen: list[object] = []

    def trial_done(self, candidate: Candidate) -> None:
        if not self.seen:
            self.seen.append(heartbeat(self.db))
            time.sleep(self.hold_s)
            self.seen.append(heartbeat(self.db))
            with Store(self.db) as store:
                self.status = store.latest_run().status  # type: ignore[union-attr]


def test_the_lease_is_renewed_while_the_search_runs(
    config_folder: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Renewals every 0.3 s instead of every few seconds; SQLite's clock has whole seconds.
    monkeypatch.setattr(storage, "HEARTBEAT_SECONDS", 0.3)
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    listener = _SlowTrial(db, hold_s=2.5)
    outcome = tuned(
        config_folder("llama"), db, listener, hardware="1xA10G-24GB", seq=8, new_tokens=2, trials=3
    )
    assert outcome.run.status is RunStatus.COMPLETE
    before, after = listener.seen  # SQLite's text, which sorts in time order
    assert str(after) > str(before)
    assert listener.status is RunStatus.RUNNING
