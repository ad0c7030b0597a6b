"""The HTTP service: stored runs, their maps and reports, and the best map for a request, on the
public API (`import tuner`) with one database held open.

Rules every route keeps:

- Reads are open to clients on this machine (loopback); from elsewhere they need the bearer
  token, and anything that writes always does. The token is the service's `token` (``tuner
  serve`` reads ``TUNER_API_TOKEN``); without one, nothing can write and only this machine may
  connect (`check_binding` refuses another address).
- A URL longer than `MAX_URL_BYTES` or a body larger than `MAX_BODY_BYTES` is refused before
  any of it is read into memory or parsed.
- Every error is JSON, ``{"error": "one line"}``, with a 4xx status for what the client sent;
  no traceback and no database URL reaches a response.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import ipaddress
import json
import re
import shlex
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Annotated
from typing import Any
from typing import Literal

from fastapi import Depends
from fastapi import FastAPI
from fastapi import Path
from fastapi import Query
from fastapi import Request
from fastapi import Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.security import HTTPBearer
from pydantic import Field
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp
from starlette.types import Message
from starlette.types import Receive
from starlette.types import Scope
from starlette.types import Send

import tuner
from tuner.core.domain import DTYPE_CHOICES
from tuner.core.domain import MAX_STORED_INT
from tuner.core.domain import Run
from tuner.core.exceptions import ConstraintError
from tuner.core.exceptions import RunNotFoundError
from tuner.core.exceptions import StorageError
from tuner.core.exceptions import TunerError
from tuner.service.cache import AnswerCache
from tuner.service.page import POLICY
from tuner.service.page import runs_page
from tuner.service.schemas import TEXT
from tuner.service.schemas import ErrorOut
from tuner.service.schemas import QueuedOut
from tuner.service.schemas import RunListOut
from tuner.service.schemas import RunOut
from tuner.service.schemas import Status
from tuner.service.schemas import TuningRequestIn
from tuner.service.schemas import queued_out
from tuner.service.schemas import run_out
from tuner.workflows.remote import UNFINISHED_HEADER
from tuner.workflows.request import DEFAULT_SEQ

__all__ = ["MAX_BODY_BYTES", "MAX_URL_BYTES", "check_binding", "create_app"]

#: The largest request body read: a tuning request is a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024
#: The longest path and query string taken.
MAX_URL_BYTES = 8 * 1024
#: The largest run id (PostgreSQL's integer); a larger one names no run.
MAX_ID = MAX_STORED_INT
#: The most runs one page of `GET /v1/runs` holds.
MAX_PAGE = 100
#: The shortest bearer token the service accepts: guessable tokens protect nothing.
MIN_TOKEN_LENGTH = 16

#: Seconds a `GET /v1/best` answer is replayed before the database is asked again: a run that
#: completes is answered at most this late (see `tuner.service.cache`).
BEST_MAX_AGE = 1.0

#: The errors any route may answer, each an `ErrorOut`.
_ERROR_STATUSES = (400, 401, 404, 405, 413, 414, 422, 503)
_ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorOut} for status in _ERROR_STATUSES}
#: The same for a route whose answer is not JSON: its errors still are.
_JSON_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
    for status in _ERROR_STATUSES
}

#: A run's id in a path.
RunNumber = Annotated[int, Path(ge=1, le=MAX_ID, description="the run's id")]
#: A run's id in a path that reads, or ``latest``: the newest run, as the command line takes it
#: (not where a run is changed: on a shared service the newest may be another client's).
RunId = Annotated[
    Annotated[int, Field(ge=1, le=MAX_ID)] | Literal["latest"],
    Path(description="the run's id, or latest for the newest run"),
]

#: A read's security in the document: none from this machine, the token from elsewhere.
_OPEN: dict[str, Any] = {"security": [{}, {"HTTPBearer": []}]}

_bearer = HTTPBearer(auto_error=False, description="TUNER_API_TOKEN as the service was started with")


def check_binding(host: str, token: str | None) -> None:
    """Refuse to serve on an address other machines reach without a token, and a short token.

    Raises:
        ConstraintError: naming what to do.
    """
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConstraintError(
            f"TUNER_API_TOKEN must be at least {MIN_TOKEN_LENGTH} characters "
            '(make one: python -c "import secrets; print(secrets.token_urlsafe())")'
        )
    if token is None and not _is_loopback(host):
        raise ConstraintError(
            f"--host {host} lets other machines connect: set TUNER_API_TOKEN first "
            "(reads from elsewhere and every write need it), or serve on 127.0.0.1"
        )


def create_app(
    db: str | None = None, *, token: str | None = None, best_max_age: float = BEST_MAX_AGE
) -> FastAPI:
    """The service as an ASGI app, with the database `db` (None: the default) opened once; an
    answer of `GET /v1/best` is replayed for `best_max_age` seconds (0: every ask reads the
    database).

    Raises:
        StorageError, SchemaOutdatedError: the database cannot be opened.
        ConstraintError: a token shorter than `MIN_TOKEN_LENGTH`.
    """
    check_binding("127.0.0.1", token)
    database = tuner.open_database(db)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        database.close()

    app = FastAPI(
        title="device-map-tuner",
        version=tuner.__version__,
        summary="Tuned device maps for from_pretrained, and the runs that found them.",
        # The interactive pages load their scripts from a CDN; the OpenAPI document is at
        # /openapi.json, and / is a page that needs no network.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.add_middleware(_Bounded)  # type: ignore[arg-type]
    app.add_middleware(
        AnswerCache,  # type: ignore[arg-type]
        path="/v1/best",
        may_read=lambda scope: _may_read(scope, token),
        max_age=best_max_age,
    )
    _add_error_handlers(app, token)

    # `_bearer` puts the token in the document; `_valid` reads the header itself.
    def reader(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        _refuse_unknown_parameters(request)
        if not _may_read(request.scope, token):
            raise HTTPException(
                401, _refusal(request.headers.get("authorization", ""), "reads from another machine")
            )

    Reader = Depends(reader)

    def writer(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        _refuse_unknown_parameters(request)
        refusal = _write_refusal(request, token)
        if refusal:
            raise HTTPException(401, refusal)

    Writer = Depends(writer)

    @app.get(
        "/",
        dependencies=[Reader],
        tags=["service"],
        openapi_extra=_OPEN,
        response_class=HTMLResponse,
        responses={**_JSON_ERRORS, 200: {"content": {"text/html": {}}, "description": "the runs page"}},
    )
    def page(
        model: Annotated[str, Query(max_length=512, pattern=TEXT)] = "",
        hardware: Annotated[str, Query(max_length=512, pattern=TEXT)] = "",
        status: Status | Literal[""] = "",
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    ) -> HTMLResponse:
        """The runs as a page to read in a browser: a filter form, each run linking to its report."""
        runs = tuner.list_runs(
            model=model or None,
            hardware=hardware or None,
            status=status or None,
            limit=limit + 1,
            offset=offset,
            db=database,
        )
        filters = {"model": model, "hardware": hardware, "status": status}
        document = runs_page(runs[:limit], filters, offset=offset, limit=limit, more=len(runs) > limit)
        return HTMLResponse(document, headers={"Content-Security-Policy": POLICY})

    @app.head("/healthz", include_in_schema=False)  # some load balancers ask with HEAD
    @app.get("/healthz", tags=["service"], openapi_extra={"security": [{}]})
    def healthz() -> dict[str, str]:
        """Whether the service can read its database; open to every client, token or none, as a
        load balancer's health check has none (it says nothing but ok, or 503); HEAD asks the
        same without the body."""
        tuner.list_runs(limit=1, db=database)
        return {"status": "ok"}

    @app.get("/v1/runs", dependencies=[Reader], tags=["runs"], openapi_extra=_OPEN)
    def list_runs(
        model: Annotated[
            str | None, Query(max_length=512, pattern=TEXT, description="in the model's name")
        ] = None,
        hardware: Annotated[
            str | None, Query(max_length=512, pattern=TEXT, description="in the hardware's name")
        ] = None,
        status: Status | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
        offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    ) -> RunListOut:
        """Runs newest first; `model` and `hardware` keep those whose names contain the text."""
        runs = tuner.list_runs(
            model=model, hardware=hardware, status=status, limit=limit + 1, offset=offset, db=database
        )
        return RunListOut(
            runs=[run_out(run) for run in runs[:limit]],
            limit=limit,
            offset=offset,
            next_offset=offset + limit if len(runs) > limit else None,
        )

    @app.post("/v1/runs", dependencies=[Writer], tags=["runs"], status_code=202)
    def queue_run(body: TuningRequestIn, response: Response) -> QueuedOut:
        """Queue a tuning request: a worker (`tuner worker`) takes it, tunes it and stores the run;
        follow it at `url`. While an equal request (the same fields) is queued, running or
        interrupted for a worker to resume, the answer is that run (its id, `url` and `Location`,
        its status) and nothing is queued. Once that run has ended, an equal request is searched
        again, even when its run is stored: ask `GET /v1/best` first."""
        run = tuner.queue_run(
            body.model,
            hardware=body.hardware,
            dtype=body.dtype,
            batch=body.batch,
            seq=body.seq,
            new_tokens=body.new_tokens,
            max_memory=body.max_memory,
            pins=body.pins,
            exclude=body.exclude,
            trials=body.trials,
            timeout=body.timeout,
            db=database,
        )
        response.headers["Location"] = f"/v1/runs/{run.id}"
        return queued_out(run)

    @app.post(
        "/v1/runs/{run_id}/cancel",
        dependencies=[Writer],
        tags=["runs"],
        responses={409: {"model": ErrorOut, "description": "a worker is tuning the run, or it has ended"}},
    )
    def cancel_run(run_id: RunNumber) -> RunOut:
        """Withdraw a queued run, which no worker will then take, or an interrupted one, which
        no worker will resume: it fails, saying it was cancelled, and keeps what it found. A run
        a worker is tuning is not cancelled (409): stop its workers first."""
        try:
            return run_out(tuner.cancel_run(stored(run_id).id, db=database))
        except ConstraintError as exc:
            raise HTTPException(409, str(exc)) from None

    @app.get("/v1/runs/{run_id}", dependencies=[Reader], tags=["runs"], openapi_extra=_OPEN)
    def get_run(run_id: RunId) -> RunOut:
        """One run: what was asked, where it stands, its winner."""
        return run_out(stored(run_id))

    def stored(run_id: int | str) -> Run:
        try:
            return tuner.get_run(run_id, db=database)
        except RunNotFoundError:
            # The store's message names the database; the client needs only the id.
            raise HTTPException(
                404, "no runs yet" if run_id == "latest" else f"no run has id {run_id}"
            ) from None

    @app.get(
        "/v1/runs/{run_id}/map",
        dependencies=[Reader],
        openapi_extra=_OPEN,
        tags=["maps"],
        responses={
            200: {
                "description": "the winner's map, as `tuner export` writes it",
                "headers": {
                    UNFINISHED_HEADER: {
                        "description": "only for a run not complete: why its map is its best so far",
                        "schema": {"type": "string"},
                    }
                },
            }
        },
    )
    def get_map(run_id: RunId, with_max_memory: bool = False) -> JSONResponse:
        """The run's winning map, exactly the JSON ``from_pretrained(device_map=...)`` takes; with
        `with_max_memory`, ``{"device_map": ..., "max_memory": ..., "dtype": ...}`` (the limits and
        dtype it was planned for, `Run.exported`)."""
        return _map_response(stored(run_id), with_max_memory)

    @app.get(
        "/v1/runs/{run_id}/report",
        dependencies=[Reader],
        openapi_extra=_OPEN,
        tags=["runs"],
        response_class=HTMLResponse,
        responses={**_JSON_ERRORS, 200: {"content": {"text/html": {}}, "description": "one HTML page"}},
    )
    def get_report(run_id: RunId) -> HTMLResponse:
        """The run's HTML report, as `tuner report` writes it."""
        return HTMLResponse(tuner.report_html(stored(run_id).id, db=database))

    @app.get(
        "/v1/best",
        dependencies=[Reader],
        openapi_extra=_OPEN,
        tags=["maps"],
        responses={200: {"description": "the winner's map, as `tuner export` writes it"}},
    )
    def best(
        model: Annotated[str, Query(min_length=1, max_length=4096, pattern=TEXT, description="as tuned")],
        hardware: Annotated[
            str, Query(min_length=1, max_length=512, pattern=TEXT, description="the spec, as tuned")
        ],
        batch: Annotated[int, Query(ge=1, le=MAX_ID)] = 1,
        seq: Annotated[int, Query(ge=1, le=MAX_ID)] = DEFAULT_SEQ,
        new_tokens: Annotated[int | None, Query(ge=0, le=MAX_ID, description="any when left out")] = None,
        dtype: Literal[DTYPE_CHOICES] = "auto",  # type: ignore[valid-type]
        max_memory: Annotated[
            str | None, Query(max_length=512, pattern=TEXT, description='e.g. "0=20GiB,cpu=64GiB"')
        ] = None,
        with_max_memory: bool = False,
    ) -> JSONResponse:
        """The map of the newest complete run tuned for exactly this model, hardware, workload and
        limits (no pins, no exclusions); 404 names the command that tunes it. The same question
        asked again within a second gets the same answer without reading the database, so a run
        that has just completed is answered at most about a second later."""
        from tuner.core.sizes import parse_max_memory

        try:
            limits = parse_max_memory(max_memory) if max_memory else None
        except ValueError as exc:
            raise ConstraintError(f"max_memory: {exc}") from None

        def newest(at_seq: int) -> Run | None:
            return tuner.best_run(
                model,
                hardware=hardware,
                batch=batch,
                seq=at_seq,
                new_tokens=new_tokens,
                dtype=dtype,
                max_memory=limits,
                db=database,
            )

        found = newest(seq)
        if found is None:
            # The command a miss names stores a vision or speech model's run under the default
            # seq whatever seq it asks: a client asking again with this one would loop.
            under_default = newest(DEFAULT_SEQ) if seq != DEFAULT_SEQ else None
            words = _not_tuned(model, hardware, batch, seq, new_tokens, dtype, max_memory, under_default)
            raise HTTPException(404, words)
        return _map_response(found, with_max_memory)

    return app


def _map_response(run: Run, with_max_memory: bool) -> JSONResponse:
    if run.winner is None:
        raise HTTPException(404, run.no_map)
    document = run.exported(with_max_memory=with_max_memory)
    headers = {"Content-Location": f"/v1/runs/{run.id}/map"}
    if run.unfinished:
        # The body stays the map from_pretrained takes; a header value is one line of latin-1.
        headers[UNFINISHED_HEADER] = " ".join(run.unfinished.split()).encode("ascii", "replace").decode()
    return JSONResponse(document, headers=headers)


def _not_tuned(
    model: str,
    hardware: str,
    batch: int,
    seq: int,
    new_tokens: int | None,
    dtype: str,
    max_memory: str | None,
    under_default: Run | None,
) -> str:
    # `this machine` is no spec: the command measures the machine it runs on, the service's
    here = hardware == tuner.THIS_MACHINE
    words = ["tuner", "optimize", model, *([] if here else ["--hardware", hardware])]
    words += ["--batch", str(batch), "--seq", str(seq)]
    if new_tokens is not None:
        words += ["--new-tokens", str(new_tokens)]
    if dtype != "auto":
        words += ["--dtype", dtype]
    if max_memory:
        words += ["--max-memory", max_memory]
    # a spec's request can be queued for the workers, and its command runs anywhere
    how = "tune it on the machine the service runs on" if here else "queue it (POST /v1/runs) or tune it"
    where = (
        ""
        if under_default is None
        else f" (run {under_default.id} is tuned for it under seq {DEFAULT_SEQ}, where a model that "
        f"takes no text, such as a vision or speech model, keeps every workload: for one, ask with "
        f"seq={DEFAULT_SEQ})"
    )
    return f"no complete run tuned for this request{where}; {how} with: {shlex.join(words)}"


def _refuse_unknown_parameters(request: Request) -> None:
    """A query parameter the route does not take is an error, not ignored: ``new-tokens=64``
    for ``new_tokens`` would otherwise answer for another workload."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = {parameter.alias for parameter in dependant.query_params}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = f"it takes {', '.join(sorted(known))}" if known else "it takes none"
        raise HTTPException(422, f"unknown query parameter {unknown[0]!r}; {takes}")


def _may_read(scope: Scope, token: str | None) -> bool:
    """Whether a read may be answered: from this machine always, from elsewhere with the token."""
    client = scope.get("client")
    if token is None or (client is not None and _is_loopback(client[0])):
        return True
    authorization = next((value for name, value in scope.get("headers", ()) if name == b"authorization"), b"")
    return _valid(authorization.decode("latin-1"), token)


def _valid(authorization: str, token: str) -> bool:
    """Whether an Authorization header carries the token: as a bearer token, or as the password of
    HTTP basic authentication, which a browser asks its user for (any user name)."""
    scheme, _, value = authorization.partition(" ")
    given = value.strip()
    if scheme.lower() == "basic":
        try:
            given = base64.b64decode(given, validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.encode(), token.encode())


def _refusal(authorization: str, what: str) -> str:
    """Why a request's Authorization header (`authorization`, empty when it sent none) does not
    let it do `what`, in one line: no token, a token under another scheme, or another token."""
    need = f"{what} need the bearer token (TUNER_API_TOKEN)"
    scheme = authorization.partition(" ")[0]
    if not authorization:
        return need
    if scheme.lower() not in {"bearer", "basic"}:
        return f"{need}, sent as 'Authorization: Bearer <token>', not under the scheme {scheme!r}"
    return f"the token given is not this service's: {need}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _write_refusal(request: Request, token: str | None) -> str:
    """Why `request` may not write, in one line; empty when its token is the service's."""
    if token is None:
        return "this service takes no writes: start it with TUNER_API_TOKEN set"
    given = request.headers.get("authorization", "")
    return "" if _valid(given, token) else _refusal(given, "writes")


def _add_error_handlers(app: FastAPI, token: str | None) -> None:
    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        response = _error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        if exc.status_code == 401:
            # A browser asks its user for basic authentication (the token as the password).
            page = request.url.path == "/" or request.url.path.endswith("/report")
            response.headers["WWW-Authenticate"] = 'Basic realm="device-map-tuner"' if page else "Bearer"
        return response

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        # A body that is not JSON fails before the writer's check runs (FastAPI reads the body
        # first): a client without the token learns it needs one, not what the body should be.
        refusal = _write_refusal(request, token) if request.method == "POST" else ""
        if refusal:
            return await http_error(request, HTTPException(401, refusal))
        return _error(422, _first_problem(exc, request.headers.get("content-type", "")))

    async def tuner_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, RunNotFoundError):
            return _error(404, "no such run")
        if isinstance(exc, StorageError):
            # Its message names the database; the client learns only that it is unavailable.
            return _error(503, "the database is unavailable; try again later")
        return _error(422, _one_line(exc))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal error")

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(TunerError, tuner_error)
    app.add_exception_handler(Exception, unexpected)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


#: How pydantic names the members of a union in an error's location.
_UNION_MEMBER = re.compile(r"^(int|str|float|bool|none|constrained-\w+|[\w-]+\[.*\])$")


def _first_problem(exc: RequestValidationError, content_type: str) -> str:
    problems = exc.errors()
    if not problems:
        return "invalid request"
    first = problems[0]
    if first.get("type") == "json_invalid":  # located at a character of the body, which no field names
        where = first.get("loc", ("body", 0))[-1]
        why = (first.get("ctx") or {}).get("error", "invalid")
        return f"the body is not JSON: {why} at character {where}"
    # pydantic names the member of a union it tried (literal['queued', ...], int, str): not the
    # client's words
    where = ".".join(
        str(part) for part in first.get("loc", ()) if part != "body" and not _UNION_MEMBER.match(str(part))
    )
    if where == "path.run_id" and any("latest" in str(problem.get("loc", ())) for problem in problems):
        # pydantic's words are of the union's first member, the number: the path takes either
        return f"path.run_id: a run's id (1 to {MAX_ID}) or latest (got {first.get('input')!r})"
    if not where:  # the body as a whole
        if content_type.partition(";")[0].strip().lower() != "application/json":
            # FastAPI reads a body as JSON only when it says it is
            sent = content_type or "none"
            return f"the body must be a JSON object, sent with Content-Type: application/json (not {sent})"
        return "the body must be a JSON object (see the request's schema in /openapi.json)"
    # a validator's own ValueError reads as its message, without pydantic's "Value error, "
    return f"{where}: {str(first.get('msg', 'invalid')).removeprefix('Value error, ')}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _Bounded:
    """Refuses a URL longer than `MAX_URL_BYTES` (414) and a body larger than `MAX_BODY_BYTES`
    (413), whether it says its length or streams in chunks, before the app reads it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") > MAX_URL_BYTES:
            await _send_error(send, 414, f"the URL is longer than {MAX_URL_BYTES} bytes")
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > MAX_BODY_BYTES):
                await _send_error(send, 413, f"the body is larger than {MAX_BODY_BYTES} bytes")
                return
        await self.app(scope, _counting(receive), send)


def _counting(receive: Receive) -> Callable[[], Awaitable[Message]]:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                raise HTTPException(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        return message

    return counted


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
