"""The client of `tuner serve`: a stored map fetched over HTTP, with the standard library alone.

A machine that only runs models asks the service for its map: it needs neither the database (its
URL or credentials) nor torch, SQLAlchemy or the tuner's other dependencies. The bearer token,
which the service asks of clients on other machines, comes from ``TUNER_API_TOKEN``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import warnings
from email.message import Message
from typing import Any

from tuner.core.devices import to_hf
from tuner.core.devices import to_key
from tuner.core.exceptions import ConstraintError
from tuner.core.exceptions import RunNotFoundError
from tuner.core.exceptions import StorageError
from tuner.core.exceptions import UnfinishedRunWarning
from tuner.workflows.request import TuningRequest

__all__ = ["best_map", "run_map"]

#: The environment variable holding the token the service was started with.
TOKEN_VAR = "TUNER_API_TOKEN"
#: Seconds a request to the service may take.
TIMEOUT_S = 30.0
#: The header with which the service says that a map is an unfinished run's best so far.
UNFINISHED_HEADER = "Tuner-Unfinished"


def best_map(server: str, request: TuningRequest, *, with_max_memory: bool = False) -> dict[str, Any]:
    """The map the service at `server` stores for `request` (``GET /v1/best``): the newest
    complete run tuned for the same model and hardware names, workload and limits; with
    `with_max_memory`, ``{"device_map": ..., "max_memory": ..., "dtype": ...}`` (as `run_map`).

    Its pins, exclusions and maps of its own are not asked for: the service answers runs tuned
    without any.

    Raises:
        ConstraintError: the request names no hardware.
        RunNotFoundError: the service has no such run; the message is the command that tunes it.
        StorageError: the service cannot be reached or answers with an error.
    """
    if request.hardware is None:
        raise ConstraintError("server: name the hardware spec the map was tuned for (hardware=...)")
    query: dict[str, Any] = {
        "model": request.model,
        "hardware": request.hardware,
        "batch": request.batch,
        "seq": request.seq,
        "dtype": request.dtype,
    }
    if request.new_tokens is not None:
        query["new_tokens"] = request.new_tokens
    if request.max_memory:
        query["max_memory"] = ",".join(f"{key}={size}" for key, size in request.max_memory.items())
    if with_max_memory:
        query["with_max_memory"] = "true"
    document, _ = _get_json(server, "/v1/best", query)
    return _checked_map(server, "/v1/best", document, with_max_memory=with_max_memory)


def run_map(server: str, run: int | str, *, with_max_memory: bool = False) -> dict[str, Any]:
    """The winning map of run `run` (an id, or ``"latest"``) at the service `server`, as
    ``tuner export`` writes it; with `with_max_memory`, ``{"device_map": ..., "max_memory": ...,
    "dtype": ...}``.

    Warns:
        UnfinishedRunWarning: the run is not complete (the service says so): the map is its best
            so far.

    Raises:
        ConstraintError: `run` is neither an id nor ``"latest"``.
        RunNotFoundError: no such run, or it has no map yet.
        StorageError: the service cannot be reached or answers with an error.
    """
    latest = run == "latest"
    if latest:  # by its id: a service older than `latest` in its paths answers this too
        runs = _runs(server, {"limit": 1})
        if not runs:
            raise RunNotFoundError(f"{_base(server)} stores no runs yet")
        run = runs[0]["id"]
    if isinstance(run, bool) or not (isinstance(run, int) or (isinstance(run, str) and run.isdigit())):
        raise ConstraintError(f"{run!r} is not a run id; give a number or 'latest'")
    query = {"with_max_memory": "true"} if with_max_memory else {}
    try:
        document, headers = _get_json(server, f"/v1/runs/{int(run)}/map", query)
    except RunNotFoundError as missing:
        if not latest:
            raise
        complete = _runs(server, {"status": "complete", "limit": 1})
        if not complete:
            raise
        raise RunNotFoundError(f"{missing}; the newest complete run is {complete[0]['id']}") from None
    document = _checked_map(server, f"/v1/runs/{int(run)}/map", document, with_max_memory=with_max_memory)
    unfinished = headers.get(UNFINISHED_HEADER)
    if unfinished:
        warnings.warn(f"{_base(server)}: {unfinished}", UnfinishedRunWarning, stacklevel=3)
    if with_max_memory:  # GPUs as ints, as accelerate's max_memory takes them (JSON sends "0")
        document["max_memory"] = {to_hf(to_key(key)): size for key, size in document["max_memory"].items()}
    return document  # type: ignore[no-any-return]


def _base(server: str) -> str:
    parsed = urllib.parse.urlsplit(server)
    if parsed.scheme not in {"http", "https"} or not parsed.netloc:
        raise ConstraintError(f"server must be an http:// or https:// URL (got {server!r})")
    return server.rstrip("/")


def _get_json(server: str, path: str, query: dict[str, Any]) -> tuple[Any, Message]:
    """The service's JSON answer to GET `path`, and the answer's headers."""
    url = f"{_base(server)}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    headers = {"Accept": "application/json"}
    token = os.environ.get(TOKEN_VAR)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S
        ) as answer:
            body = answer.read()
            try:
                return json.loads(body), answer.headers
            except ValueError:  # a web server, a proxy's page: reached, but no tuner service
                raise _not_the_service(
                    server, path, f"{answer.headers.get_content_type()}, not JSON"
                ) from None
    except urllib.error.HTTPError as error:
        message = _error_message(error)
        if message is None:  # the service's errors are {"error": ...}; a 404 page is no missing run
            raise _not_the_service(
                server, path, f"{error.code} {error.reason}, not the service's error"
            ) from None
        if error.code == 404:
            raise RunNotFoundError(f"{_base(server)}: {message}") from None
        if error.code == 422:
            raise ConstraintError(f"{_base(server)}: {message}") from None
        raise StorageError(f"{_base(server)} answered {error.code}: {message}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise StorageError(f"cannot reach {_base(server)}: {reason}") from None


def _error_message(error: urllib.error.HTTPError) -> str | None:
    """The service's message of an error answer; None when the answer is no error of the
    service (a web server's page, another service's JSON)."""
    try:
        return str(json.load(error)["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return None


def _not_the_service(server: str, path: str, answered: str) -> StorageError:
    return StorageError(f"{_base(server)} answered {path} with {answered}: is it a tuner serve?")


def _runs(server: str, query: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of ``GET /v1/runs`` (newest first), each with its ``id``."""
    document = _get_json(server, "/v1/runs", query)[0]
    runs = document.get("runs") if isinstance(document, dict) else None
    if not isinstance(runs, list) or not all(
        isinstance(run, dict) and isinstance(run.get("id"), int) for run in runs
    ):
        raise _not_the_service(server, "/v1/runs", "JSON that lists no runs")
    return runs


def _checked_map(server: str, path: str, document: Any, *, with_max_memory: bool) -> dict[str, Any]:
    """`document` as the service sends a map: module name -> device (and, `with_max_memory`,
    inside ``{"device_map", "max_memory", "dtype"}``)."""
    placements = document.get("device_map") if with_max_memory and isinstance(document, dict) else document
    limits = document.get("max_memory") if with_max_memory and isinstance(document, dict) else {}
    try:
        if not isinstance(placements, dict) or not placements or not isinstance(limits, dict):
            raise ValueError("not a map")
        for place in [*placements.values(), *limits]:
            to_key(place)
    except ValueError:
        raise _not_the_service(server, path, "JSON that is no device map") from None
    return document  # type: ignore[no-any-return]
