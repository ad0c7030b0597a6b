"""`GET /v1/best` answered again from what the app said a moment ago: replayed while fresh, asked
afresh once old, one refresh at a time, and never for a client the app would refuse."""

from __future__ import annotations

import asyncio
import sqlite3

from starlette.testclient import TestClient
from starlette.types import Message
from starlette.types import Receive
from starlette.types import Scope
from starlette.types import Send

import tuner
from tests.tuner_tests.service_tests.conftest import LOOPBACK
from tests.tuner_tests.service_tests.conftest import SPEC
from tests.tuner_tests.service_tests.conftest import TOKEN
from tuner.service import create_app
from tuner.service.cache import AnswerCache

ELSEWHERE = ("192.0.2.7", 50000)


def best_query(db: str) -> dict[str, str | int]:
    """The request run 1 (no limits) was tuned for."""
    return {"model": tuner.get_run(1, db=db).model_name, "hardware": SPEC, "seq": 8, "new_tokens": 2}


def fail_run_1(db: str) -> None:
    """Run 1 stops being complete, behind the service's back: `GET /v1/best` has no answer now."""
    with sqlite3.connect(db.removeprefix("sqlite:///")) as connection:
        assert connection.execute("UPDATE runs SET status = 'FAILED' WHERE id = 1").rowcount == 1
    connection.close()


def test_a_fresh_answer_is_replayed_without_the_database_and_an_old_one_is_asked_again(db: str) -> None:
    query = best_query(db)
    with (
        TestClient(create_app(db, best_max_age=3600), client=LOOPBACK) as replaying,
        TestClient(create_app(db, best_max_age=0), client=LOOPBACK) as asking,
    ):
        first = replaying.get("/v1/best", params=query)
        assert first.status_code == 200 and asking.get("/v1/best", params=query).status_code == 200
        fail_run_1(db)
        again = replaying.get("/v1/best", params=query)
        assert again.status_code == 200 and again.content == first.content
        assert again.headers["content-location"] == "/v1/runs/1/map"
        assert asking.get("/v1/best", params=query).status_code == 404
        # another question is not answered from the kept one
        assert replaying.get("/v1/best", params={**query, "seq": 9}).status_code == 404


def test_only_clients_the_app_lets_read_get_a_kept_answer(db: str) -> None:
    query = best_query(db)
    app = create_app(db, token=TOKEN, best_max_age=3600)
    with TestClient(app, client=LOOPBACK) as here, TestClient(app, client=ELSEWHERE) as elsewhere:
        assert here.get("/v1/best", params=query).status_code == 200
        refused = elsewhere.get("/v1/best", params=query)
        assert refused.status_code == 401 and "token" in refused.json()["error"]
        wrong = {"Authorization": "Bearer not-the-token-at-all"}
        assert elsewhere.get("/v1/best", params=query, headers=wrong).status_code == 401
        allowed = elsewhere.get("/v1/best", params=query, headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200
        assert here.get("/v1/best", params={**query, "new-tokens": 2}).status_code == 422


def test_refusals_are_not_kept(db: str) -> None:
    query = best_query(db)
    with TestClient(create_app(db, best_max_age=3600), client=LOOPBACK) as client:
        assert client.get("/v1/best", params={**query, "dtype": "bfloat16"}).status_code == 404
        assert client.get("/v1/best", params={**query, "batch": 0}).status_code == 422
        assert client.get("/v1/best", params=query).status_code == 200


def test_while_one_ask_refreshes_an_old_answer_the_others_get_the_kept_one() -> None:
    """An app that answers a counter, and holds its answer until released: the asks that arrive
    during a refresh must not reach it."""
    calls = 0
    release = asyncio.Event()
    now = [0.0]

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal calls
        calls += 1
        body = str(calls).encode()
        if calls > 1:
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    cache = AnswerCache(
        counting, path="/v1/best", may_read=lambda scope: True, max_age=1.0, clock=lambda: now[0]
    )

    async def ask() -> bytes:
        scope: Scope = {"type": "http", "method": "GET", "path": "/v1/best", "query_string": b"m=x"}
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        async def send(message: Message) -> None:
            sent.append(message)

        await cache(scope, receive, send)
        return b"".join(message.get("body", b"") for message in sent)

    async def scenario() -> list[bytes]:
        assert await ask() == b"1" and await ask() == b"1" and calls == 1
        now[0] = 5.0  # the kept answer is old now
        refresh = asyncio.create_task(ask())
        await asyncio.sleep(0)  # the refresh reaches the app and waits there
        during = [await ask() for _ in range(3)]
        release.set()
        return [*during, await refresh, await ask()]

    assert asyncio.run(scenario()) == [b"1", b"1", b"1", b"2", b"2"]
    assert calls == 2
