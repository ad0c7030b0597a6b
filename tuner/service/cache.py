"""Answers of the hottest read, `GET /v1/best`, kept for a moment in front of the app.

A fleet that boots asks the same question many times a second, and the answer changes only when
a run completes. Going through routing, validation, the thread pool and the database for each ask
costs milliseconds; replaying the stored bytes costs microseconds. So a 200 answer is kept, by its
exact query string, for `max_age` seconds; after that the next ask goes through the app again and
refreshes it, while the asks that arrive during that one refresh still get the kept answer (a
burst of clients is never sent to the database at once). A run that completes is therefore
answered at most `max_age` seconds (plus one refresh) late.

Only answers the app gave with status 200 are kept, so every refusal (a bad parameter, a missing
token, no run yet) still comes from the app itself; and only asks the app would let read
(`may_read`) are answered from here.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp
from starlette.types import Message
from starlette.types import Receive
from starlette.types import Scope
from starlette.types import Send

__all__ = ["AnswerCache"]


@dataclass(frozen=True)
class _Answer:
    stored_at: float
    start: Message
    body: bytes


class AnswerCache:
    """ASGI middleware: answers GETs of `path` from the 200 answers the app gave in the last
    `max_age` seconds, at most `capacity` distinct query strings (the least recently asked go)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        path: str,
        may_read: Callable[[Scope], bool],
        max_age: float = 1.0,
        capacity: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.path = path
        self.may_read = may_read
        self.max_age = max_age
        self.capacity = capacity
        self.clock = clock
        self._answers: OrderedDict[bytes, _Answer] = OrderedDict()
        self._refreshing: set[bytes] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        if self.max_age <= 0 or not self.may_read(scope):
            await self.app(scope, receive, send)
            return
        key: bytes = scope.get("query_string", b"")
        answer = self._answers.get(key)
        if answer is not None and (self.clock() - answer.stored_at < self.max_age or key in self._refreshing):
            self._answers.move_to_end(key)
            await send(answer.start)
            await send({"type": "http.response.body", "body": answer.body})
            return
        self._refreshing.add(key)
        try:
            await self.app(scope, receive, self._keeping(key, send))
        finally:
            self._refreshing.discard(key)

    def _keeping(self, key: bytes, send: Send) -> Send:
        """`send`, keeping a 200 answer under `key` once its body is whole; any other answer
        drops what was kept (the run it named may be gone)."""
        start: Message | None = None
        chunks: list[bytes] = []

        async def keeping(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    self._keep(key, start, b"".join(chunks))
            await send(message)

        return keeping

    def _keep(self, key: bytes, start: Message, body: bytes) -> None:
        if start["status"] != 200:
            self._answers.pop(key, None)
            return
        self._answers[key] = _Answer(self.clock(), start, body)
        self._answers.move_to_end(key)
        while len(self._answers) > self.capacity:
            self._answers.popitem(last=False)
