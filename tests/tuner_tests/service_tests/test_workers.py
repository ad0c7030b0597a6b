"""The whole path on PostgreSQL, as a fleet runs it: a request POSTed to the service, two `tuner
worker` processes, the one that took the run killed in the middle of its search; the other takes
the run over once its lease has expired, and the run completes once, with exactly its trial
budget; GET /v1/best then answers with the map `tuner export` writes."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy
from starlette.testclient import TestClient

from tests.tuner_tests.conftest import run
from tests.tuner_tests.service_tests.conftest import LOOPBACK
from tests.tuner_tests.service_tests.conftest import SPEC
from tests.tuner_tests.service_tests.conftest import TOKEN
from tuner.service import create_app

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TRIALS = 80
#: How long any wait may take, however busy the machine.
WAIT_S = 300
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def trials_done(url: str) -> int:
    """The study's complete trials; 0 before Optuna made its tables."""
    try:
        return int(scalar(url, "SELECT count(*) FROM trials WHERE state = 'COMPLETE'") or 0)
    except sqlalchemy.exc.ProgrammingError:
        return 0


def scalar(url: str, statement: str) -> object:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(sqlalchemy.text(statement))
            return result.scalar() if result.returns_rows else None
    finally:
        engine.dispose()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {WAIT_S} s"
        time.sleep(0.2)


def worker(db: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tuner", "worker", "--poll", "0.2", "--db", db]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def test_two_workers_one_killed_mid_search_complete_the_run_once(
    config_folder: Callable[[str], Path], postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(config_folder("llama"))
    request = {"model": model, "hardware": SPEC, "dtype": "float32", "seq": 8, "new_tokens": 2}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(postgres_url, token=TOKEN), client=LOOPBACK) as client:
        run_id = client.post("/v1/runs", json={**request, "trials": TRIALS}, headers=auth).json()["id"]

        first = worker(postgres_url)
        wait_for(lambda: trials_done(postgres_url) >= 10, "10 trials by the first worker")
        second = worker(postgres_url)
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
        assert trials_done(postgres_url) < TRIALS, "the first worker finished before it was killed"
        assert client.get(f"/v1/runs/{run_id}").json()["status"] == "running"  # its lease still runs

        # Time passes: the lease expires, as it does LEASE_SECONDS after the worker died.
        scalar(postgres_url, "UPDATE runs SET heartbeat_at = now() - interval '1 hour'")
        wait_for(lambda: client.get(f"/v1/runs/{run_id}").json()["status"] == "complete", "complete run")
        # Stopped once it has said so and waits for more: a stop while it is still storing the
        # run is an interrupted run, a case of its own.
        said: queue.Queue[str] = queue.Queue()
        assert second.stderr is not None
        reader = threading.Thread(target=lambda: [said.put(line) for line in second.stderr], daemon=True)
        reader.start()
        assert said.get(timeout=WAIT_S).startswith("worker taking queued runs from ")
        # it joined the search of the run the first worker took, or took the run once its lease
        # expired, and said so
        taken = said.get(timeout=WAIT_S)
        assert taken.startswith(f"run {run_id}: ") and f" {model} on {SPEC} " in taken, taken
        ended = said.get(timeout=WAIT_S)
        if ended.startswith(f"run {run_id} continues: "):  # the trials the first worker spent
            ended = said.get(timeout=WAIT_S)
        assert ended.startswith(f"run {run_id}: complete, winner "), ended
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
        reader.join(timeout=60)
        assert second.returncode == 0, list(said.queue)

        runs = client.get("/v1/runs").json()["runs"]
        assert [(found["id"], found["trials"]) for found in runs] == [(run_id, TRIALS)]
        numbers = scalar(
            postgres_url, f"SELECT count(DISTINCT trial) FROM candidates WHERE run_id = {run_id}"
        )
        assert numbers == TRIALS == trials_done(postgres_url)
        assert scalar(postgres_url, "SELECT count(*) FROM trials WHERE state = 'RUNNING'") == 0

        best = client.get("/v1/best", params={key: value for key, value in request.items() if key != "dtype"})
        code, exported, _ = run(["export", str(run_id), "--db", postgres_url], capsys)
        assert code == 0 and best.json() == json.loads(exported)
