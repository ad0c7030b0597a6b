"""Tuning requests through the service: POST /v1/runs queues a run, `tuner worker` takes and tunes
it, and GET /v1/best then answers with the map `tuner export` writes; a request no worker can
tune fails with why; writes need the token, from anywhere."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import tuner
from storage import Store
from tests.tuner_tests.conftest import run
from tests.tuner_tests.service_tests.conftest import LOOPBACK
from tests.tuner_tests.service_tests.conftest import SPEC
from tests.tuner_tests.service_tests.conftest import TOKEN
from tuner.core.domain import RunStatus
from tuner.service import create_app
from tuner.workflows.request import TuningRequest
from tuner.workflows.request import request_key

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def run_count(db: str) -> int:
    with sqlite3.connect(db.removeprefix("sqlite:///")) as connection:
        count = int(connection.execute("SELECT count(*) FROM runs").fetchone()[0])
    connection.close()
    return count


def test_a_queued_request_is_tuned_by_a_worker_and_its_map_becomes_the_best(
    client: TestClient, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tuner.get_run(1, db=db).model_name
    request = {"model": model, "hardware": SPEC, "dtype": "float32", "seq": 10, "new_tokens": 2}
    lookup = {key: value for key, value in request.items() if key != "dtype"}
    assert client.get("/v1/best", params=lookup).status_code == 404

    unreadable = client.post("/v1/runs", json={**request, "model": "/no/such/model"}, headers=AUTH)
    queued = client.post("/v1/runs", json={**request, "trials": 8, "max_memory": {"0": "1GiB"}}, headers=AUTH)
    assert queued.status_code == unreadable.status_code == 202
    run_id = queued.json()["id"]
    assert queued.headers["location"] == queued.json()["url"] == f"/v1/runs/{run_id}"
    shown = client.get(f"/v1/runs/{run_id}").json()
    assert (shown["status"], shown["requested_trials"], shown["winner"]) == ("queued", 8, None)
    assert shown["max_memory"] == {"0": 2**30}
    assert client.get(f"/v1/runs/{run_id}/map").status_code == 404
    assert client.get(f"/v1/runs/{run_id}/report").text.startswith("<!DOCTYPE html>")

    code, _, err = run(["worker", "--once", "--db", db], capsys)
    assert code == 0, err
    failed = client.get(f"/v1/runs/{unreadable.json()['id']}").json()
    assert failed["status"] == "failed" and failed["error"].startswith("no such model folder")
    done = client.get(f"/v1/runs/{run_id}").json()
    assert done["status"] == "complete" and done["trials"] == 8
    described = "batch 1, seq 10, 2 new tokens, float32"
    assert err.splitlines() == [
        f"run {failed['id']}: tuning /no/such/model on {SPEC} ({described})",
        f"run {failed['id']}: failed: {failed['error']}",
        f"run {run_id}: tuning {model} on {SPEC} ({described})",
        f"run {run_id}: complete, winner {done['winner']['name']}, "
        + err.splitlines()[3].rpartition(", ")[2],
    ]

    best = client.get("/v1/best", params={**lookup, "max_memory": "0=1GiB"})
    assert best.headers["content-location"] == f"/v1/runs/{run_id}/map"
    _, exported, _ = run(["export", str(run_id), "--db", db], capsys)
    assert best.json() == json.loads(exported) == done["winner"]["device_map"]
    # Queued again, the same request is searched again: a worker finds nothing else to do.
    code, _, err = run(["worker", "--once", "--db", db], capsys)
    assert code == 0 and err == f"nothing queued in {tuner.database_url(db)}\n"


def test_a_model_named_relative_to_the_service_is_queued_by_its_absolute_path(
    config_folder: Callable[[str], Path], db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker started in another folder reads the folder the service read (to fill in
    new_tokens), where it failed with 'no such model folder: ./m'."""
    folder = config_folder("llama")
    monkeypatch.chdir(folder.parent)
    queued = tuner.queue_run(f"./{folder.name}/", hardware=SPEC, dtype="float32", seq=8, trials=3, db=db)
    assert queued.model_name == str(folder) and queued.workload.new_tokens == 32
    assert (
        tuner.queue_run(folder.name, hardware=SPEC, dtype="float32", seq=8, trials=3, db=db).id == queued.id
    )


def test_an_equal_request_while_one_waits_or_runs_answers_with_that_run(client: TestClient, db: str) -> None:
    body = {
        "model": "/models/m",
        "hardware": SPEC,
        "dtype": "float16",
        "seq": 20,
        "new_tokens": 8,  # the service cannot read the model: it names them
        "trials": 5,
        "max_memory": {"0": "1GiB", "cpu": "8GiB"},
        "exclude": ["disk", 0],
    }
    first = client.post("/v1/runs", json=body, headers=AUTH)
    # The same words in another order are the same request.
    same = {**body, "max_memory": {"cpu": "8GiB", "0": 2**30}, "exclude": [0, "disk"]}
    again = client.post("/v1/runs", json=same, headers=AUTH)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    # the limits as --max-memory and GET /v1/best write them
    as_text = client.post("/v1/runs", json={**body, "max_memory": "cpu=8GiB, 0=1GiB"}, headers=AUTH)
    assert as_text.json() == first.json()
    # the model's folder spelt otherwise: the folder the service reads, as every worker must
    for spelt in ("/models/m/", "/models/../models/m"):
        assert client.post("/v1/runs", json={**body, "model": spelt}, headers=AUTH).json() == first.json()
    other = [client.post("/v1/runs", json={**body, **change}, headers=AUTH).json()["id"] for change in (
        {"trials": 6}, {"dtype": "bfloat16"}, {"seq": 21}, {"max_memory": {"0": "1GiB"}}, {"exclude": []},
        {"timeout": 60},
    )]  # fmt: skip
    assert len({first.json()["id"], *other}) == 7 and run_count(db) == 2 + 7
    timed = client.post("/v1/runs", json={**body, "timeout": 60.0}, headers=AUTH).json()["id"]
    assert timed == other[-1]

    # Made at once, equal requests make one run.
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: tuner.queue_run(db=db, **{**body, "seq": 30}).id, range(8)))  # type: ignore[arg-type]
    assert len(set(made)) == 1 and run_count(db) == 2 + 8

    with Store(db) as store:
        claimed = store.claim_queued_run()  # a worker takes the oldest: the first request
        assert claimed is not None and claimed[0].id == first.json()["id"]
        running = client.post("/v1/runs", json=body, headers=AUTH).json()
        assert (running["id"], running["status"]) == (first.json()["id"], "running")
        store.fail_run(first.json()["id"], "no map fits")
    # Once its run has ended, the request is queued again.
    after = client.post("/v1/runs", json=body, headers=AUTH).json()
    assert after["id"] not in {first.json()["id"], *other, *made} and after["status"] == "queued"


def test_a_time_limit_ends_the_search_of_a_queued_run(
    client: TestClient, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tuner.get_run(1, db=db).model_name
    request = {"model": model, "hardware": SPEC, "dtype": "float32", "seq": 14, "new_tokens": 2}
    # Far more trials than a worker runs in the second the request allows.
    queued = client.post("/v1/runs", json={**request, "trials": 100_000, "timeout": 1}, headers=AUTH).json()
    shown = client.get(queued["url"]).json()
    assert (shown["requested_trials"], shown["requested_timeout_s"]) == (100_000, 1.0)
    with Store(db) as store:
        assert store.search_seconds_left(queued["id"]) is None  # no deadline before the search

    code, _, err = run(["worker", "--once", "--db", db], capsys)
    assert code == 0 and err.splitlines()[1].startswith(f"run {queued['id']}: complete"), err
    done = client.get(queued["url"]).json()
    assert done["status"] == "complete" and 0 < done["trials"] < 100_000
    with Store(db) as store:
        assert store.search_seconds_left(queued["id"]) == 0
    # a limit of centuries, refused as the service refuses it, not by the worker storing its deadline
    with pytest.raises(tuner.ConstraintError, match=r"at most 2592000 \(30 days; got 1000000000000.0\)$"):
        tuner.queue_run(db=db, **{**request, "seq": 15, "timeout": 1e12})  # type: ignore[arg-type]


def test_a_worker_trusts_remote_code_for_its_runs_only_when_started_so(
    client: TestClient, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tuner.get_run(1, db=db).model_name
    request = {"model": model, "hardware": SPEC, "dtype": "float32", "seq": 15, "new_tokens": 2, "trials": 3}
    queued = client.post("/v1/runs", json=request, headers=AUTH).json()
    code, _, err = run(["worker", "--once", "--trust-remote-code", "--db", db], capsys)
    assert code == 0 and err.splitlines()[1].startswith(f"run {queued['id']}: complete"), err

    # The run answers the request as the worker made it: with the model's own code allowed.
    arguments = {key: value for key, value in request.items() if key not in {"model", "trials"}}
    with Store(db) as store:
        for trusted, answer in ((True, queued["id"]), (False, None)):
            made = TuningRequest.from_arguments(model, trust_remote_code=trusted, **arguments)  # type: ignore[arg-type]
            found = store.find_requested_run(request_key(made))
            assert (found.id if found is not None else None) == answer


@pytest.mark.postgres
def test_equal_requests_made_at_once_make_one_run_on_postgresql(postgres_url: str) -> None:
    request = {"model": "/models/m", "hardware": SPEC, "dtype": "float32", "new_tokens": 2, "trials": 5}
    tuner.queue_run(db=postgres_url, **{**request, "seq": 1})  # type: ignore[arg-type]  # the schema
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: tuner.queue_run(db=postgres_url, **request).id, range(8)))  # type: ignore[arg-type]
    assert len(set(made)) == 1
    assert len(tuner.list_runs(db=postgres_url, limit=100)) == 2


def test_writes_need_the_token_even_from_this_machine(db: str) -> None:
    body = {"model": "m", "hardware": SPEC, "dtype": "float32", "new_tokens": 0}
    with TestClient(create_app(db), client=LOOPBACK) as without_token:
        refused = without_token.post("/v1/runs", json=body, headers=AUTH)
        assert refused.status_code == 401 and "TUNER_API_TOKEN" in refused.json()["error"]
    with TestClient(create_app(db, token=TOKEN), client=LOOPBACK) as client:
        missing = client.post("/v1/runs", json=body)
        assert missing.status_code == 401
        assert missing.json()["error"] == "writes need the bearer token (TUNER_API_TOKEN)"
        wrong = client.post("/v1/runs", json=body, headers={"Authorization": "Bearer x" * 3})
        assert wrong.status_code == 401
        assert wrong.json()["error"] == (
            "the token given is not this service's: writes need the bearer token (TUNER_API_TOKEN)"
        )
        scheme = client.post("/v1/runs", json=body, headers={"Authorization": f"Token {TOKEN}"})
        assert scheme.status_code == 401
        assert scheme.json()["error"] == (
            "writes need the bearer token (TUNER_API_TOKEN), sent as 'Authorization: Bearer <token>', "
            "not under the scheme 'Token'"
        )
        assert run_count(db) == 2
        assert client.post("/v1/runs", json=body, headers=AUTH).status_code == 202
    assert run_count(db) == 3


@pytest.mark.slow
def test_workers_with_concurrency_each_take_their_own_run(client: TestClient, db: str) -> None:
    model = tuner.get_run(1, db=db).model_name
    ids = [
        client.post(
            "/v1/runs",
            json={
                "model": model,
                "hardware": SPEC,
                "dtype": "float32",
                "seq": seq,
                "new_tokens": 2,
                "trials": 3,
            },
            headers=AUTH,
        ).json()["id"]
        for seq in (11, 12)
    ]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuner",
            "worker",
            "--concurrency",
            "2",
            "--once",
            "--poll",
            "0.1",
            "--db",
            db,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    # Each run is taken by one worker; the one that finishes first may join the other's search
    # (and say how many of its trials were done or under way) and then says how that run ended
    # too; one that found nothing to do says so.
    lines = [line for line in done.stderr.splitlines() if not line.startswith("nothing queued in ")]
    started = (": tuning ", ": joining the search of ", " continues: ")
    ended = [line for line in lines if not any(said in line for said in started)]
    assert sorted({line.partition(":")[0] for line in ended}) == [f"run {i}" for i in ids]
    assert all(": complete, winner " in line for line in ended), lines
    for run_id in ids:
        shown = client.get(f"/v1/runs/{run_id}").json()
        assert shown["status"] == "complete" and shown["trials"] == 3


def complete_trials(db: str) -> int:
    """The complete trials of Optuna's studies; 0 before Optuna made its tables."""
    with sqlite3.connect(db.removeprefix("sqlite:///")) as connection:
        try:
            count = int(
                connection.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
            )
        except sqlite3.OperationalError:
            count = 0
    connection.close()
    return count


@pytest.mark.slow
def test_a_stopped_worker_leaves_its_run_interrupted_for_the_next_worker(
    client: TestClient, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tuner.get_run(1, db=db).model_name
    request = {
        "model": model,
        "hardware": SPEC,
        "dtype": "float32",
        "seq": 13,
        "new_tokens": 2,
        "trials": 80,
    }
    run_id = client.post("/v1/runs", json=request, headers=AUTH).json()["id"]
    before = complete_trials(db)
    worker = subprocess.Popen(
        [sys.executable, "-m", "tuner", "worker", "--db", db], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while complete_trials(db) < before + 10:
        assert worker.poll() is None and time.monotonic() < deadline, worker.stderr
        time.sleep(0.1)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=120)
    stopped = client.get(f"/v1/runs/{run_id}").json()
    assert worker.returncode == 143 and stopped["status"] == "interrupted", (err, stopped)
    assert err.splitlines()[0] == f"worker taking queued runs from {tuner.database_url(db)} (Ctrl-C stops)"
    assert err.splitlines()[2:] == [
        f"interrupted: run {run_id} keeps its {stopped['trials']} trials; a worker resumes it"
    ]
    assert 10 <= stopped["trials"] < 80

    code, _, err = run(["worker", "--once", "--db", db], capsys)
    assert code == 0 and err.splitlines()[1].startswith(f"run {run_id}: complete")
    assert client.get(f"/v1/runs/{run_id}").json()["trials"] == 80


def test_a_worker_stopped_while_it_looks_for_work_exits_cleanly(db: str) -> None:
    """A stop that lands in the worker's look for work (here a database write waiting for the
    lock another writer holds) finds it holding no run: it says it stopped and exits 0, as one
    stopped while it waits between looks does."""
    db_file = Path(db.removeprefix("sqlite:///"))
    writer = sqlite3.connect(db_file, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the write lock, held until the worker is stopped
    try:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tuner", "worker", "--db", db], stderr=subprocess.PIPE, text=True
        )
        fds = Path(f"/proc/{worker.pid}/fd")
        deadline = time.monotonic() + 120
        # it has opened the database (a read), and then waits for the lock to claim a run
        while not any(link.resolve() == db_file.resolve() for link in fds.iterdir() if link.is_symlink()):
            assert worker.poll() is None and time.monotonic() < deadline, worker.stderr
            time.sleep(0.1)
        time.sleep(2.0)
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the signal waits in the worker for its next Python line: after the lock
    finally:
        writer.rollback()
        writer.close()
    _, err = worker.communicate(timeout=60)
    assert (worker.returncode, err) == (
        0,
        f"worker taking queued runs from {tuner.database_url(db)} (Ctrl-C stops)\nworker stopped\n",
    )


def test_new_tokens_left_out_are_what_optimize_makes_of_them_read_from_the_models_config(
    client: TestClient, config_folder: Callable[[str], Path]
) -> None:
    request = {"hardware": SPEC, "dtype": "float32", "seq": 8}
    for family, expected in (("llama", 32), ("bert", 0)):  # BERT does not generate: 32 would fail
        answer = client.post("/v1/runs", json={**request, "model": str(config_folder(family))}, headers=AUTH)
        assert answer.status_code == 202, answer.text
        assert client.get(answer.json()["url"]).json()["workload"]["new_tokens"] == expected
    unreadable = client.post("/v1/runs", json={**request, "model": "/no/such/model"}, headers=AUTH)
    assert unreadable.status_code == 422
    assert unreadable.json()["error"] == (
        "model: no such model folder: /no/such/model; with new_tokens left out its config is read here, "
        "to ask for 32 new tokens of a model that generates and 0 of one that does not: for a model "
        "only the workers can read, give new_tokens"
    )
    elsewhere = {**request, "model": "/no/such/model", "new_tokens": 0}
    named = client.post("/v1/runs", json=elsewhere, headers=AUTH)
    assert named.status_code == 202  # for workers that may read it


def test_a_run_no_worker_is_tuning_can_be_cancelled_and_then_no_worker_takes_it(
    client: TestClient, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    body = {"model": "/models/m", "hardware": SPEC, "dtype": "float16", "seq": 20, "new_tokens": 8}
    queued = client.post("/v1/runs", json=body, headers=AUTH).json()["id"]
    assert client.post(f"/v1/runs/{queued}/cancel").status_code == 401  # a write: the token

    cancelled = client.post(f"/v1/runs/{queued}/cancel", headers=AUTH)
    assert cancelled.status_code == 200
    assert (cancelled.json()["status"], cancelled.json()["error"]) == (
        "failed",
        "cancelled before a worker took it",
    )
    assert client.get(f"/v1/runs/{queued}").json() == cancelled.json()
    again = client.post(f"/v1/runs/{queued}/cancel", headers=AUTH)
    assert (again.status_code, again.json()) == (
        409,
        {"error": f"run {queued} has failed: only a queued or interrupted run can be cancelled"},
    )
    code, _, _ = run(["worker", "--once", "--db", db], capsys)
    assert code == 0 and tuner.get_run(queued, db=db).status is RunStatus.FAILED  # not taken
    requeued = client.post("/v1/runs", json=body, headers=AUTH).json()
    assert requeued["id"] != queued and requeued["status"] == "queued"  # asked again: tuned afresh

    with Store(db) as store:
        claimed = store.claim_queued_run()  # a worker takes it
        assert claimed is not None and claimed[0].id == requeued["id"]
        busy = client.post(f"/v1/runs/{requeued['id']}/cancel", headers=AUTH)
        assert busy.status_code == 409 and busy.json()["error"].startswith(
            f"run {requeued['id']} is being tuned: a run is cancelled while queued or interrupted"
        )
        store.finish_run(
            requeued["id"], status=RunStatus.INTERRUPTED, winner=None, trials=3, phase_seconds={}
        )
    stopped = client.post(f"/v1/runs/{requeued['id']}/cancel", headers=AUTH).json()
    assert (stopped["status"], stopped["error"], stopped["trials"]) == (
        "failed",
        "cancelled after 3 trials",
        3,
    )
    assert client.post("/v1/runs/999/cancel", headers=AUTH).status_code == 404
    with Store(db) as store:
        assert store.claim_queued_run() is None  # nothing left for a worker
