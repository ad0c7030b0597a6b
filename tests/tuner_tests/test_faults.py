"""Fault injection: `tuner optimize` as users start it (separate processes), many at once on one
database, and stopped by SIGTERM, SIGINT or SIGKILL at a point of its work, then started again.

Whatever happens, the database stays whole (SQLite's integrity check), holds one run per workload
(identical requests join or resume one run), no run is left running, and the final run is
complete with every trial of its budget stored. Planning only (a shipped spec, no measurement),
so that each process spends its time on imports, the database and the search.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy

from storage import Store
from tests.tuner_tests.conftest import run
from tuner.core.domain import Run
from tuner.core.domain import RunStatus

pytestmark = pytest.mark.slow

TRIALS = 20
#: How long any one process may take, however busy the machine.
PROCESS_S = 300
#: Each process computes on one thread: eight of them share two cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def command(model: Path, db: str, seq: int, trials: int = TRIALS) -> list[str]:
    return [
        sys.executable, "-m", "tuner", "optimize", str(model), "--hardware", "1xA10G-24GB", "--seq", str(seq),
        "--new-tokens", "2", "--trials", str(trials), "--db", db, "--json",
    ]  # fmt: skip


def start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=PROCESS_S)
    return process.returncode, out, err


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def rows(url: str, statement: str, **parameters: object) -> list[tuple[object, ...]]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(sqlalchemy.text(statement), parameters)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def wait_for(condition: Callable[[], bool], what: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + PROCESS_S
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the process ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {PROCESS_S} s")
        time.sleep(0.05)


def stored_runs(url: str) -> bool:
    """Whether a run is stored (the database may not even have its tables yet)."""
    try:
        return bool(rows(url, "SELECT id FROM runs"))
    except sqlalchemy.exc.SQLAlchemyError:
        return False


def check_database(url: str, seqs: set[int], trials: int = TRIALS) -> dict[int, Run]:
    """The invariants after any fault: a whole database, one complete run per workload with its
    whole trial budget stored once, nothing running; the run of each prompt length."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        connection.close()
    with Store(url) as store:
        runs = store.list_runs(limit=100)
        assert sorted(run.workload.seq for run in runs) == sorted(seqs), "one run per workload"
        for run in runs:
            assert run.status is RunStatus.COMPLETE, run
            assert run.winner is not None
            numbers = [c.trial for c in store.list_candidates(run.id) if c.trial is not None]
            assert len(numbers) == len(set(numbers)) == run.trials >= trials
    # Optuna's trials: none left RUNNING by a process that stopped.
    assert rows(url, "SELECT count(*) FROM trials WHERE state = 'RUNNING'") == [(0,)]
    return {run.workload.seq: run for run in runs}


@pytest.fixture
def model(config_folder: Callable[[str], Path]) -> Path:
    return config_folder("llama")


def run_many(model: Path, db: str, seqs: list[int]) -> list[dict[str, object]]:
    """Start one process per prompt length at once; each must succeed; their JSON outputs."""
    processes = [start(command(model, db, seq)) for seq in seqs]
    results = [finish(process) for process in processes]
    for code, _, err in results:
        assert code == 0, err
    return [json.loads(out) for _, out, _ in results]


def test_eight_processes_on_one_sqlite_file_make_one_run_per_workload(model: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    seqs = [8, 8, 8, 8, 9, 10, 11, 12]  # four identical requests, four others
    outputs = run_many(model, db, seqs)
    runs = check_database(db, set(seqs))
    for seq, output in zip(seqs, outputs, strict=True):
        assert output["id"] == runs[seq].id and output["status"] == "complete"
    # The four identical requests searched one study together (or reused it): one trial budget.
    assert sum(1 for output in outputs if output["id"] == runs[8].id) == 4


@pytest.mark.postgres
def test_four_processes_on_a_fresh_postgres_database_make_one_run_per_workload(
    model: Path, postgres_url: str
) -> None:
    seqs = [8, 8, 9, 10]
    outputs = run_many(model, postgres_url, seqs)
    runs = check_database(postgres_url, set(seqs))
    assert outputs[0]["id"] == outputs[1]["id"] == runs[8].id


def signal_at(process: subprocess.Popen[str], db: str, point: str, number: signal.Signals) -> None:
    """Send `number` to `process` at `point`: "profiling" (as soon as the database is opened,
    before any run is stored) or "searching" (once its run is stored)."""
    if point == "profiling":
        path = Path(db.removeprefix("sqlite:///"))
        wait_for(path.exists, "database file", process)
    else:
        wait_for(lambda: stored_runs(db), "stored run", process)
    os.kill(process.pid, number)


@pytest.mark.parametrize("point", ["profiling", "searching"])
@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_optimize_names_its_run_in_one_line_and_the_same_command_finishes_it(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], point: str, number: signal.Signals
) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    process = start(command(model, db, 8, trials=400))
    signal_at(process, db, point, number)
    code, out, err = finish(process)
    assert code == 128 + number, err  # as shells report the signal: 130 for SIGINT, 143 for SIGTERM
    assert len(lines(err)) == 1, err  # no traceback, Optuna's or ours
    (stopped,) = lines(err)
    # On a loaded machine a signal sent as the database appears may land once the run is stored
    # (planning for a spec takes a fraction of a second): then it is checked as the searching case.
    if point == "searching" or stopped.startswith("interrupted: run 1 "):
        assert stopped.startswith("interrupted: run 1 keeps its "), stopped
        with Store(db) as store:
            run = store.get_run(1)
            kept = [c for c in store.list_candidates(1) if c.trial is not None]
        assert run.status is RunStatus.INTERRUPTED and run.trials == len(kept)
        # --json: a script reads why on stdout, and which run to resume without parsing it
        assert json.loads(out) == {"error": stopped, "run_id": 1, "trials": run.trials}
        assert f"keeps its {run.trials} trials" in stopped
        # a resume asks for the budget again: without it, it would stop at the default 300
        assert stopped.endswith("the same command, or tuner optimize --resume 1 --trials 400, continues it")
        # Stopped between trials: nothing of Optuna's is left running.
        assert rows(db, "SELECT count(*) FROM trials WHERE state = 'RUNNING'") == [(0,)]
    else:
        assert stopped in {"interrupted", "interrupted before a run was stored"}, err

    again(model, db, capsys)


@pytest.mark.parametrize("point", ["profiling", "searching"])
def test_a_killed_optimize_is_shown_interrupted_once_its_lease_expires_and_the_same_command_resumes_it(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], point: str
) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    process = start(command(model, db, 8, trials=400))
    signal_at(process, db, point, signal.SIGKILL)
    code, _, _ = finish(process)
    assert code == -signal.SIGKILL
    if point == "searching":
        (shown,) = json.loads(cli(["history", "--json", "--db", db], capsys))
        assert shown["status"] == "running"  # its lease has not expired yet
        # Time passes: the lease expires, as it does LEASE_SECONDS after the process died.
        rows(db, "UPDATE runs SET heartbeat_at = :at", at="2000-01-01 00:00:00")
        (shown,) = json.loads(cli(["history", "--json", "--db", db], capsys))
        assert shown["status"] == "interrupted" and shown["id"] == 1
        assert json.loads(cli(["show", "1", "--json", "--db", db], capsys))["status"] == "interrupted"
    # The trial the killed process was running, if any, is failed: not left RUNNING for good.
    again(model, db, capsys)


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """`tuner ARGS` in this process, as a user types it after the fault; its stdout."""
    code, out, err = run(args, capsys)
    assert code == 0, err
    return out


def again(model: Path, db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The same command again: it resumes run 1 (not a second run), saying so when it was stored
    with its trials, and completes it."""
    args = command(model, db, 8)[3:]  # after `python -m tuner`
    try:
        stored = rows(db, "SELECT trials FROM runs")
    except sqlalchemy.exc.OperationalError:  # stopped before the schema was made
        stored = []
    code, out, err = run(args, capsys)
    assert code == 0 and json.loads(out)["id"] == 1, err
    if stored and stored[0][0]:
        ((trials,),) = stored
        said = re.search(rf"run 1 continues: (\d+) of its {TRIALS} trials done or under way", err)
        assert said is not None and int(said.group(1)) >= trials, err
    check_database(db, {8})
