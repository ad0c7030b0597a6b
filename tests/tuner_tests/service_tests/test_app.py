"""The service's read routes as clients meet them: runs, maps and reports equal to what the
command line prints and writes, the best map for a request, and one JSON error for anything bad."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from pathlib import Path
from typing import get_args

import pytest
from starlette.testclient import TestClient

import tuner
from tests.families import save_family
from tests.tuner_tests.conftest import run
from tests.tuner_tests.service_tests.conftest import LOOPBACK
from tests.tuner_tests.service_tests.conftest import SPEC
from tests.tuner_tests.service_tests.conftest import TOKEN
from tuner.core.domain import INPUT_KINDS
from tuner.core.domain import RunStatus
from tuner.core.exceptions import ConstraintError
from tuner.service import check_binding
from tuner.service import create_app
from tuner.service.schemas import Inputs
from tuner.service.schemas import Status


def dump(db: str) -> list[str]:
    """Every row of the database, as SQL."""
    with sqlite3.connect(db.removeprefix("sqlite:///")) as connection:
        lines = list(connection.iterdump())
    connection.close()
    return lines


def test_runs_are_listed_newest_first_filtered_and_paged(client: TestClient) -> None:
    page = client.get("/v1/runs").json()
    assert [run["id"] for run in page["runs"]] == [2, 1] and page["next_offset"] is None
    assert page["runs"][0]["max_memory"] == {"0": 2**30} and page["runs"][1]["max_memory"] == {}
    assert len(client.get("/v1/runs", params={"model": "LLAMA", "status": "complete"}).json()["runs"]) == 2
    assert client.get("/v1/runs", params={"hardware": "H100"}).json()["runs"] == []
    assert client.get("/v1/runs", params={"status": "running"}).json()["runs"] == []
    first = client.get("/v1/runs", params={"limit": 1}).json()
    assert [run["id"] for run in first["runs"]] == [2] and first["next_offset"] == 1
    second = client.get("/v1/runs", params={"limit": 1, "offset": first["next_offset"]}).json()
    assert [run["id"] for run in second["runs"]] == [1] and second["next_offset"] is None


def test_a_run_its_map_and_its_report_are_what_the_command_line_gives(
    client: TestClient, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = client.get("/v1/runs/1").json()
    stored = tuner.get_run(1, db=db)
    assert stored.winner is not None
    assert (shown["status"], shown["model"], shown["hardware"]) == ("complete", stored.model_name, SPEC)
    assert shown["workload"] == {"batch": 1, "seq": 8, "new_tokens": 2, "dtype": "float32", "inputs": "text"}
    assert shown["winner"]["device_map"] == stored.winner.device_map.to_hf()

    code, exported, _ = run(["export", "1", "--db", db], capsys)
    assert code == 0 and client.get(shown["map_url"]).json() == json.loads(exported)
    code, exported, _ = run(["export", "2", "--with-max-memory", "--db", db], capsys)
    assert code == 0 and client.get("/v1/runs/2/map?with_max_memory=true").json() == json.loads(exported)
    assert json.loads(exported)["max_memory"] == {"0": 2**30}  # asked for
    # none asked for: what the spec's GPU had free, which the map was planned against
    code, exported, _ = run(["export", "1", "--with-max-memory", "--db", db], capsys)
    planned = tuner.get_run(1, db=db)
    assert planned.max_memory == {} and planned.winner and planned.winner.prediction
    (gpu,) = [m for m in planned.winner.prediction.memory if m.device == "0"]
    assert gpu.limit > 2**30 and json.loads(exported)["max_memory"] == {"0": gpu.limit}
    assert client.get("/v1/runs/1/map?with_max_memory=true").json() == json.loads(exported)

    report = client.get(shown["report_url"])
    assert report.headers["content-type"].startswith("text/html")
    assert report.text == tuner.report_html(1, db=db)


def test_best_is_the_map_tuner_export_writes_and_a_miss_names_the_command_that_tunes_it(
    client: TestClient, db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tuner.get_run(1, db=db).model_name
    request = {"model": model, "hardware": SPEC, "seq": 8, "new_tokens": 2}
    for run_id, limits in ((1, None), (2, "0=1GiB")):
        answer = client.get("/v1/best", params={**request, **({"max_memory": limits} if limits else {})})
        assert answer.status_code == 200 and answer.headers["content-location"] == f"/v1/runs/{run_id}/map"
        _, exported, _ = run(["export", str(run_id), "--db", db], capsys)
        assert answer.json() == json.loads(exported)
    assert client.get("/v1/best", params={**request, "dtype": "float32"}).status_code == 200
    spelt_otherwise = {**request, "model": model + "//./"}  # the same folder
    assert client.get("/v1/best", params=spelt_otherwise).json() == json.loads(exported)
    monkeypatch.chdir(Path(model).parent)  # named relative to the service, as a POST may name it
    assert client.get("/v1/best", params={**spelt_otherwise, "model": Path(model).name}).status_code == 200
    assert client.get("/v1/best", params={**request, "dtype": "bfloat16"}).status_code == 404
    # a spec no run can be tuned for: refused as a POST refuses it, not a miss naming a command that fails
    misspelt = client.get("/v1/best", params={**request, "hardware": "9xFOO"})
    body = {**request, "hardware": "9xFOO", "dtype": "float32"}
    queued = client.post("/v1/runs", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert misspelt.status_code == queued.status_code == 422
    assert misspelt.json()["error"] == queued.json()["error"]
    assert misspelt.json()["error"].startswith("hardware '9xFOO': no shipped spec has this name (")
    (Path.cwd() / "myspec").write_text("{}")  # a spec file here, named as a shipped one is: a miss
    assert client.get("/v1/best", params={**request, "hardware": "myspec"}).status_code == 404

    miss = client.get("/v1/best", params={**request, "seq": 9})
    assert miss.status_code == 404
    command = miss.json()["error"].partition("tune it with: ")[2]
    assert command.startswith(f"tuner optimize {model} --hardware {SPEC} --batch 1 --seq 9")
    code, _, err = run([*command.split()[1:], "--trials", "3", "--db", db], capsys)
    assert code == 0, err
    assert client.get("/v1/best", params={**request, "seq": 9}).status_code == 200


def test_a_miss_for_a_model_that_takes_no_text_names_the_run_under_the_default_seq(tmp_path: Path) -> None:
    # The command a miss names stores a vision model's run under seq 128 whatever seq it asks:
    # asking again with the same seq would miss again, so the miss says where the run is.
    folder = str(save_family("vit", tmp_path / "vit", weights=False))
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    request = {"model": folder, "hardware": SPEC, "seq": 512, "new_tokens": 0}
    with TestClient(create_app(db), client=LOOPBACK) as client:
        first = client.get("/v1/best", params=request).json()["error"]
        assert first.startswith("no complete run tuned for this request; queue it")
        tuned = tuner.optimize(folder, hardware=SPEC, seq=512, new_tokens=0, trials=2, db=db)
        assert tuned.workload.seq == 128
        miss = client.get("/v1/best", params=request)
        assert miss.status_code == 404
        assert miss.json()["error"].startswith(
            f"no complete run tuned for this request (run {tuned.id} is tuned for it under seq 128, where a "
            "model that takes no text, such as a vision or speech model, keeps every workload: for one, "
            "ask with seq=128); queue it"
        )
        answer = client.get("/v1/best", params={**request, "seq": 128})
        assert answer.status_code == 200 and answer.headers["content-location"] == f"/v1/runs/{tuned.id}/map"
        assert client.get(f"/v1/runs/{tuned.id}").json()["workload"]["inputs"] == "vision"
        assert "1ximage+0 float32" in client.get("/").text


def test_a_request_for_the_services_own_machine_is_told_a_command_that_runs_there(client: TestClient) -> None:
    miss = client.get("/v1/best", params={"model": "./my-llama", "hardware": tuner.THIS_MACHINE, "seq": 9})
    assert miss.status_code == 404
    error = miss.json()["error"]
    # `this machine` is no spec: the command measures the machine it runs on
    assert error.endswith(
        "tune it on the machine the service runs on with: tuner optimize ./my-llama --batch 1 --seq 9"
    )


def test_latest_in_a_path_is_the_newest_run_as_the_command_line_takes_it(
    client: TestClient, db: str, tmp_path: Path
) -> None:
    newest = tuner.get_run("latest", db=db)
    assert client.get("/v1/runs/latest").json() == client.get(f"/v1/runs/{newest.id}").json()
    answer = client.get("/v1/runs/latest/map")
    assert answer.headers["content-location"] == f"/v1/runs/{newest.id}/map"
    assert answer.json() == client.get(f"/v1/runs/{newest.id}/map").json()
    assert client.get("/v1/runs/latest/report").text == tuner.report_html(newest.id, db=db)
    with TestClient(create_app(f"sqlite:///{tmp_path / 'empty.db'}"), client=LOOPBACK) as empty:
        missing = empty.get("/v1/runs/latest/map")
        assert (missing.status_code, missing.json()) == (404, {"error": "no runs yet"})


BAD_REQUESTS = [
    ("GET", "/v1/runs/999", None, 404, "no run has id 999"),
    ("GET", "/v1/runs/0", None, 422, "path.run_id"),
    ("GET", "/v1/runs/newest", None, 422, "path.run_id: a run's id (1 to 2147483647) or latest (got 'newest"),
    ("POST", "/v1/runs/latest/cancel", None, 422, "path.run_id: Input should be a valid integer"),
    ("GET", "/v1/runs/99999999999", None, 422, "path.run_id"),
    ("GET", "/v1/best?model=m&hardware=h&batch=abc", None, 422, "query.batch"),
    (
        "GET",
        "/v1/best?model=m&hardware=h&max_memory=cpu%3Dlots",
        None,
        422,
        "max_memory: max memory entry 'cpu=lots': 'lots' is not a size",
    ),
    (
        "GET",
        "/v1/best?model=m&hardware=h&max_memory=gpu7%3D1GiB",
        None,
        422,
        "max_memory: max memory entry 'gpu7=1GiB': 'gpu7' is not a device",
    ),
    ("GET", "/v1/best?model=m", None, 422, "query.hardware"),
    ("GET", "/v1/best?model=m&hardware=h&new-tokens=64", None, 422, "unknown query parameter 'new-tokens'"),
    ("GET", "/v1/runs?status=bogus", None, 422, "query.status"),
    ("GET", "/?status=bogus", None, 422, "query.status: Input should be 'queued'"),
    ("GET", "/?x=1", None, 422, "unknown query parameter 'x'"),
    ("GET", "/v1/runs?model=%00", None, 422, "query.model"),
    ("GET", "/v1/runs?limit=100000", None, 422, "query.limit"),
    ("GET", "/v1/runs?model=" + "a" * 9000, None, 414, "longer than"),
    ("POST", "/v1/runs", b"{" * 70_000, 413, "larger than"),
    ("POST", "/v1/runs", b"not json", 422, "the body is not JSON: Expecting value at character 0"),
    ("POST", "/v1/runs", b'{"model": "m", "dtype": "float32"}', 422, "hardware"),
    ("POST", "/v1/runs", b'{"model": "m", "hardware": "1xA10G-24GB", "dtype": "auto"}', 422, "dtype"),
    (
        "POST",
        "/v1/runs",
        b'{"model": "m", "hardware": "no-such-spec", "dtype": "float32"}',
        422,
        "no-such-spec",
    ),
    ("POST", "/v1/runs", b'{"model": "m", "hardware": "1xA10G-24GB", "dtype": "float32", "x": 1}', 422, "x"),
    (
        "POST",
        "/v1/runs",
        b'{"model": "m", "hardware": "1xA10G-24GB", "dtype": "float32", "max_memory": {"5": "1GiB"}}',
        422,
        "max_memory names device 5, which this hardware does not have (cpu, 0, disk)",
    ),
    (
        "POST",
        "/v1/runs",
        b'{"model": "m", "hardware": "1xA10G-24GB", "dtype": "float32", "exclude": ["cpu", "0"]}',
        422,
        "exclude leaves no device that computes (0, cpu excluded)",
    ),
    (
        "POST",
        "/v1/runs",
        b'{"model": "m", "hardware": "/etc/passwd", "dtype": "float32"}',
        422,
        "spec /etc/passwd: not valid JSON",
    ),
    (
        "POST",
        "/v1/runs",
        b'{"model": "m", "hardware": "1xA10G-24GB", "dtype": "float32", "max_memory": {"0": "100GiB"}}',
        422,
        "max_memory['0'] is 100.0 GiB, more than device 0 has (",
    ),
    (
        "POST",
        "/v1/runs",
        b'{"model": "m", "hardware": "1xA10G-24GB", "dtype": "float32", "max_memory": {"cpu": true}}',
        422,
        "max_memory.cpu",
    ),
    (
        "POST",
        "/v1/runs",
        b'{"model": "m", "hardware": "1xA10G-24GB", "dtype": "float32", "pins": {"lm_head": true}}',
        422,
        "pins.lm_head",
    ),
    (
        "POST",
        "/v1/runs",
        b'{"model": "m", "hardware": "1xA10G-24GB", "dtype": "float32", "pins": {"lm_head": 3}}',
        422,
        "pins['lm_head']: no device 3 on this hardware (cpu, 0, disk)",
    ),
    (
        "POST",
        "/v1/runs",
        b'{"model": "m", "hardware": "1xA10G-24GB", "dtype": "float32", "max_memory": "cpu=lots"}',
        422,
        "max_memory: max memory entry 'cpu=lots': 'lots' is not a size",
    ),
    (
        "POST",
        "/v1/runs",
        b'{"model": "m", "hardware": "1xA10G-24GB", "dtype": "float32", "max_memory": {"gpu": "1GiB"}}',
        422,
        "max_memory",
    ),
    (
        "POST",
        "/v1/runs",
        b'{"model": "m", "hardware": "1xA10G-24GB", "dtype": "float32", "trials": -1}',
        422,
        "trials",
    ),
    *(
        (
            "POST",
            "/v1/runs",
            b'{"model": "m", "hardware": "1xA10G-24GB", "dtype": "float32", ' + field + b"}",
            422,
            name,
        )
        for field, name in (
            # JSON's true is no count (lax validation reads it as 1)
            (b'"seq": true', "seq: Input should be a valid integer"),
            (b'"new_tokens": false', "new_tokens"),
            (b'"trials": true', "trials"),
            (b'"timeout": 0', "timeout"),
            (b'"timeout": -5', "timeout"),
            (b'"timeout": 1e9', "timeout"),
            (b'"timeout": "1h"', "timeout"),
            # Python's JSON reads them; no bound holds them off ("should be less than or equal")
            (b'"timeout": NaN', "timeout: Input should be a finite number"),
            (b'"timeout": Infinity', "timeout: Input should be a finite number"),
            # Code a request names would run on the workers: only a worker's own flag allows it.
            (b'"trust_remote_code": true', "trust_remote_code"),
            (b'"measure": 3', "measure"),
        )
    ),
    (
        "POST",
        "/v1/runs",
        b'{"model": "m\\u0000", "hardware": "1xA10G-24GB", "dtype": "float32"}',
        422,
        "model",
    ),
    ("GET", "/v1/nothing", None, 404, "Not Found"),
]


@pytest.mark.parametrize(("method", "url", "body", "status", "message"), BAD_REQUESTS)
def test_a_bad_request_gets_one_json_error_and_leaves_the_database_unchanged(
    client: TestClient, db: str, method: str, url: str, body: bytes | None, status: int, message: str
) -> None:
    before = dump(db)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    answer = client.request(method, url, content=body, headers=headers)
    assert answer.status_code == status and answer.headers["content-type"] == "application/json"
    (error,) = answer.json().values()
    assert message in error and "\n" not in error and "sqlite" not in error
    assert dump(db) == before


@pytest.mark.parametrize(("content_type", "named"), [(None, "none"), ("text/plain", "text/plain")])
def test_a_json_body_sent_without_saying_so_is_told_how_to_say_it(
    client: TestClient, db: str, content_type: str | None, named: str
) -> None:
    """curl's -d sends application/x-www-form-urlencoded unless told otherwise; FastAPI then does
    not read the body as JSON."""
    headers = {"Authorization": f"Bearer {TOKEN}", **({"Content-Type": content_type} if content_type else {})}
    body = json.dumps({"model": "m", "hardware": "1xA10G-24GB", "dtype": "float32", "new_tokens": 0})
    answer = client.post("/v1/runs", content=body.encode(), headers=headers)
    assert answer.status_code == 422
    assert answer.json()["error"] == (
        f"the body must be a JSON object, sent with Content-Type: application/json (not {named})"
    )


def test_sql_in_a_filter_is_text_to_look_for(client: TestClient, db: str) -> None:
    before = dump(db)
    for text in ("'; DROP TABLE runs; --", "%", "_", "\\", "' OR '1'='1"):
        answer = client.get("/v1/runs", params={"model": text, "hardware": text})
        assert answer.status_code == 200 and answer.json()["runs"] == []
    assert dump(db) == before


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"not json", "application/json"),
        (b'{"model": "m"}', "text/plain"),
        (b'{"model": 1}', "application/json"),
    ],
    ids=["not-json", "not-said-json", "invalid"],
)
def test_a_write_without_the_token_is_refused_before_its_body_is_read(
    client: TestClient, db: str, body: bytes, content_type: str
) -> None:
    before = dump(db)
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong"}):
        answer = client.post("/v1/runs", content=body, headers={**headers, "Content-Type": content_type})
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in answer.json()["error"]
    assert dump(db) == before


def test_reads_from_another_machine_need_the_token(db: str) -> None:
    with TestClient(create_app(db, token=TOKEN)) as elsewhere:
        refused = elsewhere.get("/v1/runs")
        assert refused.status_code == 401 and "bearer token" in refused.json()["error"]
        assert refused.headers["www-authenticate"] == "Bearer"
        assert (
            elsewhere.get("/v1/runs", headers={"Authorization": "Bearer wrong-token-wrong"}).status_code
            == 401
        )
        assert elsewhere.get("/v1/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        # A browser is asked for the token as a password, and sends it so.
        page = elsewhere.get("/")
        assert page.status_code == 401 and page.headers["www-authenticate"].startswith("Basic ")
        assert elsewhere.get("/", auth=("anyone", TOKEN)).status_code == 200
        assert elsewhere.get("/", auth=("anyone", "wrong-token-wrong")).status_code == 401
        # a load balancer's health check has no token: it learns that the service reads its database
        assert elsewhere.get("/healthz").json() == {"status": "ok"}
    with TestClient(create_app(db), client=LOOPBACK) as here:
        assert here.get("/v1/runs/1").status_code == 200


def test_serving_beyond_this_machine_needs_a_long_enough_token(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    check_binding("127.0.0.1", None)
    check_binding("0.0.0.0", TOKEN)
    with pytest.raises(ConstraintError, match="set TUNER_API_TOKEN"):
        check_binding("0.0.0.0", None)
    with pytest.raises(ConstraintError, match="at least 16 characters"):
        check_binding("127.0.0.1", "short")
    monkeypatch.delenv("TUNER_API_TOKEN", raising=False)
    code, out, err = run(["serve", "--host", "0.0.0.0", "--db", db], capsys)
    assert code == 1 and out == "" and err.startswith("error: --host 0.0.0.0 lets other machines connect")
    assert len(err.splitlines()) == 1


def test_a_broken_database_is_a_503_that_names_no_database(db: str) -> None:
    with TestClient(create_app(db), client=LOOPBACK) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        head = client.head("/healthz")  # as some load balancers ask
        assert head.status_code == 200 and head.content == b""
        Path(db.removeprefix("sqlite:///")).write_bytes(b"not a database " * 1000)
        for url in ("/healthz", "/v1/runs", "/v1/runs/1"):
            answer = client.get(url)
            assert answer.status_code == 503, url
            assert answer.json() == {"error": "the database is unavailable; try again later"}
        assert client.head("/healthz").status_code == 503


def test_tuner_serve_answers_over_http_and_stops_on_sigterm(served: str, db: str) -> None:
    with urllib.request.urlopen(f"{served}/v1/runs/1/map", timeout=30) as answer:
        assert json.load(answer) == tuner.get_run(1, db=db).winner.device_map.to_hf()  # type: ignore[union-attr]


def test_the_document_names_every_status_a_run_has_and_every_kind_of_input() -> None:
    assert set(get_args(Status)) == {status.value for status in RunStatus}
    assert get_args(Inputs) == INPUT_KINDS
