"""What the tuner tests share: the command line run in-process, and optimize with its outcome."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from typing import TypeVar

import pytest

import tuner
from tuner.cli import main
from tuner.core.domain import Candidate
from tuner.core.domain import Run
from tuner.workflows import OptimizeListener
from tuner.workflows import OptimizeOutcome


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`tuner ARGS` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main(args)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


class Recorder(OptimizeListener):
    """Remembers how an `optimize` call ended; tests' own listeners build on it."""

    reused = False
    searched = 0
    #: (run id, joined) of each run a worker took (`tune_queued`)
    claims: tuple[tuple[int, bool], ...] = ()

    def claimed(self, run: Run, *, joined: bool) -> None:
        self.claims = (*self.claims, (run.id, joined))

    def finished(self, run: Run, *, reused: bool, searched: int) -> None:
        self.reused = reused
        self.searched = searched


class Notes(Recorder):
    """A recorder that also keeps every note `optimize` said, in order."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


class FirstWorker(Notes):
    """The first of two workers on one run: says when its search starts, then holds it after its
    first trial (`holding`) until the second worker has finished one (`joined`), so that the two
    certainly overlap."""

    def __init__(self, joined: threading.Event, wait_s: float) -> None:
        super().__init__()
        self.started = threading.Event()
        self.holding = threading.Event()
        self.joined = joined
        self.wait_s = wait_s
        self.waited = False

    def searching(self, trials: int) -> None:
        self.started.set()

    def trial_done(self, candidate: Candidate) -> None:
        if not self.waited:
            self.waited = True
            self.holding.set()
            if not self.joined.wait(self.wait_s):
                raise TimeoutError("the second worker never finished a trial")


class SecondWorker(Recorder):
    """The second worker on the run: says when it has finished a trial (`joined`)."""

    def __init__(self, joined: threading.Event) -> None:
        self.joined = joined

    def trial_done(self, candidate: Candidate) -> None:
        self.joined.set()


T = TypeVar("T")


def two_workers(
    first_job: Callable[[Recorder], T], second_job: Callable[[Recorder], T], wait_s: float
) -> tuple[T, T, FirstWorker, SecondWorker]:
    """`first_job` in a thread with a `FirstWorker`; once its search has started, `second_job` in
    another with a `SecondWorker`: what each returned, and their listeners. An error in either
    thread releases the other and fails the test."""
    joined = threading.Event()
    first, second = FirstWorker(joined, wait_s), SecondWorker(joined)
    ended: dict[str, T] = {}
    errors: list[BaseException] = []

    def work(name: str, job: Callable[[Recorder], T], listener: Recorder) -> None:
        try:
            ended[name] = job(listener)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)
            joined.set()

    one = threading.Thread(target=work, args=("first", first_job, first))
    one.start()
    assert first.started.wait(wait_s), errors
    two = threading.Thread(target=work, args=("second", second_job, second))
    two.start()
    one.join(wait_s)
    two.join(wait_s)
    assert not errors, errors
    return ended["first"], ended["second"], first, second


def tuned(model: str | Path, db: str, listener: Recorder | None = None, **options: Any) -> OptimizeOutcome:
    """`tuner.optimize` through the public API, with how it ended: reused, and trials searched."""
    listener = listener or Recorder()
    found = tuner.optimize(str(model), db=db, listener=listener, **options)
    return OptimizeOutcome(found, reused=listener.reused, searched=listener.searched)


def table_rows(db_file: Path) -> dict[str, int]:
    """Rows of every table of a SQLite database, after its integrity check passed: what a test
    compares to show that a refused command left the database as it was."""
    with sqlite3.connect(db_file) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
        tables = [name for (name,) in connection.execute(query)]
        return {
            table: connection.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] for table in tables
        }
