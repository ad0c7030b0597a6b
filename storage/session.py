"""Engines for any SQLAlchemy URL, and the one transaction scope every read and write goes through.

Errors of the database layer leave this module as `tuner.core.exceptions.StorageError` with a one-line
message that names the database (password hidden) and the cause.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from tuner.core.exceptions import StorageError

#: The environment variable that names the database, as `--db` does on the command line.
ENV_VAR = "TUNER_DB"


def default_url() -> str:
    """The database to use when none is named: `$TUNER_DB`, else SQLite in the user data folder.

    The folder is `$XDG_DATA_HOME/device-map-tuner`, or `~/.local/share/device-map-tuner` when
    `XDG_DATA_HOME` is unset or not absolute (as the XDG spec asks).
    """
    configured = os.environ.get(ENV_VAR)
    if configured:
        return configured
    data_home = os.environ.get("XDG_DATA_HOME", "")
    base = Path(data_home) if os.path.isabs(data_home) else Path.home() / ".local" / "share"
    return f"sqlite:///{base / 'device-map-tuner' / 'tuner.db'}"


def describe_url(url: str | URL) -> str:
    """The URL with its password masked, fit for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Unparsable, so mask by shape: anything between `user:` and `@`.
        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", str(url))


def one_line(error: BaseException) -> str:
    """The first line of an error, preferring the driver's own message over SQLAlchemy's wrapper."""
    cause = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


def open_engine(url: str) -> Engine:
    """An engine for `url`; nothing connects until the first session.

    For a SQLite file the parent folder is created, foreign keys are switched on, and transactions
    are made to cover DDL too, so a failed migration leaves the file as it was.

    Raises:
        StorageError: the URL does not parse, names an unknown or missing driver, or the folder of a
            SQLite file cannot be created.
    """
    shown = describe_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        raise StorageError(f"{shown!r} is not a database URL: {one_line(e)}") from e
    if parsed.get_backend_name() == "sqlite":
        _create_parent_folder(parsed, shown)
    try:
        engine = sqlalchemy.create_engine(parsed)
    except (ArgumentError, ImportError) as e:
        raise StorageError(f"cannot open database {shown}: {one_line(e)}") from e
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _configure_sqlite_connection)
        event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose work is committed on exit and rolled back on any error.

    Raises:
        StorageError: the database failed (`SQLAlchemyError`) or its file did (`OSError`); the
            original error is the cause. Other errors pass through unchanged, after the rollback.
    """
    session = Session(engine)
    try:
        yield session
        session.commit()
    except (SQLAlchemyError, OSError) as e:
        session.rollback()
        raise StorageError(f"database {describe_url(engine.url)}: {one_line(e)}") from e
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _create_parent_folder(url: URL, shown: str) -> None:
    database = url.database or ""
    # In-memory databases and `file:` URIs (with `uri=true`) name no folder of ours to create.
    if database in {"", ":memory:"} or database.startswith("file:"):
        return
    try:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create the folder of database {shown}: {e}") from e


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite opens transactions itself, but not before DDL; take that over (the SQLAlchemy
    # recipe for SQLite) so that migrations are atomic. The pragma must run outside a transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _begin_sqlite_transaction(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN")
