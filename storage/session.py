"""Engines for any SQLAlchemy URL, and the transactions every read and write goes through.

Errors of the database layer leave this module as `tuner.core.exceptions.StorageError` with a one-line
message that names the database (password hidden) and the cause.

Several processes on one database (several `tuner optimize` on one SQLite file is normal use):

* A transaction is a function of a session (`transaction`), so that it can run again from the
  start: when the database answers that it is busy (SQLite's "database is locked", PostgreSQL's
  serialization failures, deadlocks and lock timeouts), it is rolled back and retried after a
  random wait that doubles each time, `ATTEMPTS` times in all.
* A statement on SQLite waits up to `BUSY_TIMEOUT_S` for a lock before it answers busy, in
  slices of `BUSY_SLICE_S`: SQLite sleeps in C, where Python runs no signal handler, so one wait
  of the whole timeout left a process that Ctrl-C or SIGTERM stopped waiting for another's lock
  for up to that long (a stopped ``tuner worker`` took 24 s to exit). A transaction that
  writes starts with ``BEGIN IMMEDIATE``, taking the write lock before it reads: a transaction
  that read first and then asks to write, after another process wrote, is refused at once and
  never waits.
* SQLite files are kept in WAL mode, where readers and the writer never wait for each other. WAL
  keeps what is committed in the ``-wal`` file until a checkpoint copies it into the database
  file, so a database file copied while a process held it open could miss it (a test that copies
  a file with `read_bytes` caught exactly that in an earlier attempt). Every connection, ours and
  Optuna's (`sqlite_connect_args`), therefore checkpoints after each commit
  (``wal_autocheckpoint = 1``); disposing of an engine (`close_engine`) checkpoints once more
  with TRUNCATE, and the last connection to a file leaves no ``-wal`` behind. Between
  transactions the database file alone then holds every commit; the one exception is a commit
  made while another process was in the middle of reading (its checkpoint cannot complete then),
  which reaches the file with the next commit or at close. To copy a database that processes are
  writing, use ``sqlite3 tuner.db ".backup copy.db"``.
* `exclusive` serializes what must happen once, whichever process comes first: creating or
  migrating the schema of a fresh database, Optuna's tables, a run for a request. PostgreSQL gets
  an advisory lock; a SQLite file gets a lock file beside it (``tuner.db.lock``), which a process
  holds while other connections of its own (Optuna's) write.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from typing import TypeVar

import sqlalchemy
from sqlalchemy import event
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from tuner.core.exceptions import StorageError

T = TypeVar("T")

#: The environment variable that names the database, as `--db` does on the command line.
ENV_VAR = "TUNER_DB"
#: How long a SQLite statement waits for another connection's lock before it answers "database
#: is locked".
BUSY_TIMEOUT_S = 30.0
#: How long SQLite itself waits at a time, signals unanswered (the module's docstring).
BUSY_SLICE_S = 0.1
#: Tries of a transaction the database refused as busy, the first included.
ATTEMPTS = 8
#: The first wait before a retry, and the most any wait lasts (each doubles, with jitter).
FIRST_WAIT_S = 0.05
MAX_WAIT_S = 2.0
#: SQLite's result code for a lock its wait did not get (an extended code keeps it in its low byte).
_SQLITE_BUSY = 5
#: SQLite result codes (primary, the low byte of extended codes) that mean "try again later".
_SQLITE_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
#: PostgreSQL SQLSTATEs that mean the same: serialization failure, deadlock, lock not available.
_POSTGRES_RETRY_STATES = frozenset({"40001", "40P01", "55P03"})
#: The key of the advisory lock `exclusive` takes on PostgreSQL ("tuner" in ASCII).
_ADVISORY_LOCK_KEY = 0x74756E6572
#: How a URL begins (RFC 3986's scheme, then a colon); a database named otherwise is a file path.
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
#: The execution option that makes SQLite begin a transaction with BEGIN IMMEDIATE.
_WRITE_OPTION = "tuner_write"


def default_url() -> str:
    """The database to use when none is named: `$TUNER_DB`, else SQLite in the user data folder.

    The folder is `$XDG_DATA_HOME/device-map-tuner`, or `~/.local/share/device-map-tuner` when
    `XDG_DATA_HOME` is unset or not absolute (as the XDG spec asks).
    """
    configured = os.environ.get(ENV_VAR)
    if configured:
        return as_url(configured)
    data_home = os.environ.get("XDG_DATA_HOME", "")
    base = Path(data_home) if os.path.isabs(data_home) else Path.home() / ".local" / "share"
    return f"sqlite:///{base / 'device-map-tuner' / 'tuner.db'}"


def as_url(database: str | os.PathLike[str]) -> str:
    """`database` as a SQLAlchemy URL: a URL as it is, a file path as the SQLite file it names,
    made absolute so that it means the same file wherever the URL travels (a worker started
    elsewhere, Optuna's storage). What starts like a URL (``scheme:``) stays one, so that a
    mistyped URL is refused, not made a file.

    Example:
        >>> as_url("postgresql://tuner@db/tuner")
        'postgresql://tuner@db/tuner'
        >>> as_url("/srv/tuner/runs.db")
        'sqlite:////srv/tuner/runs.db'
        >>> as_url("postgresql:/db/tuner")  # one slash short: refused when opened
        'postgresql:/db/tuner'

    Raises:
        StorageError: `database` is neither text nor a path.
    """
    if isinstance(database, os.PathLike):
        database = os.fspath(database)
    if not isinstance(database, str):
        raise StorageError(f"a database is named by its URL or a file's path (got {database!r})")
    if _URL_SCHEME.match(database) or not database.strip():
        return database
    return f"sqlite:///{Path(database).expanduser().absolute()}"


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


def is_transient(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from) is the database saying "busy, try again":
    a transaction that failed so was rolled back and may run again. An error raised while a busy
    one was being handled, not from it (its ``__context__``), is a failure of its own."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        for candidate in (cause, getattr(cause, "orig", None)):
            code = getattr(candidate, "sqlite_errorcode", None)
            if isinstance(code, int) and code & 0xFF in _SQLITE_BUSY_CODES:
                return True
            if isinstance(candidate, sqlite3.OperationalError) and "is locked" in str(candidate):
                return True
            if getattr(candidate, "sqlstate", None) in _POSTGRES_RETRY_STATES:
                return True
        cause = cause.__cause__
    return False


class _SQLiteCursor(sqlite3.Cursor):
    """A cursor whose statements wait for a lock up to `BUSY_TIMEOUT_S` in slices of SQLite's
    own waits (`BUSY_SLICE_S`, the connection's timeout), signal handlers running between them."""

    def execute(self, sql: str, parameters: Any = (), /) -> _SQLiteCursor:
        run = super().execute
        return _waiting_for_locks(lambda: run(sql, parameters))

    def executemany(self, sql: str, parameters: Any, /) -> _SQLiteCursor:
        rows = list(parameters)  # an iterator would be spent by a refused try
        run = super().executemany
        return _waiting_for_locks(lambda: run(sql, rows))


def _waiting_for_locks(statement: Callable[[], T]) -> T:
    """`statement()`, again while SQLite answers busy after waiting its slice for the lock, until
    `BUSY_TIMEOUT_S` have passed. A busy answer that came without a wait is raised at once, as
    SQLite gives it: SQLite lets no transaction that has read wait to write (another's write
    would make what it read stale), and a stale WAL snapshot (``SQLITE_BUSY_SNAPSHOT``) never
    passes; only the transaction run again from its start can (`retrying`)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        began = time.monotonic()
        try:
            return statement()
        except sqlite3.OperationalError as error:
            code = getattr(error, "sqlite_errorcode", None)  # Python 3.11 and later
            busy = code == _SQLITE_BUSY if code is not None else str(error) == "database is locked"
            waited = time.monotonic() - began >= _busy_slice() / 2
            if not (busy and waited) or time.monotonic() >= deadline:
                raise


def _busy_slice() -> float:
    return min(BUSY_SLICE_S, BUSY_TIMEOUT_S)


class _SQLiteConnection(sqlite3.Connection):
    """A SQLite connection in WAL mode that checkpoints after each commit, whose cursors wait for
    locks in slices (see the module's docstring), for our engines and Optuna's alike
    (`sqlite_connect_args`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        try:
            # Persistent in the file; a no-op when it is in WAL already. In-memory databases
            # stay in memory mode, read-only ones as they are.
            self.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError:
            pass  # locked by a process that is switching it, or read-only: the next connection tries
        self.execute("PRAGMA wal_autocheckpoint = 1")

    def cursor(self, factory: Any = _SQLiteCursor) -> Any:
        return super().cursor(factory)


def sqlite_connect_args() -> dict[str, Any]:
    """What `sqlite3.connect` gets for every connection to a tuner database: the busy timeout (a
    slice of it) and the WAL set-up. Optuna's engine gets the same
    (``engine_kwargs={"connect_args": ...}``)."""
    return {"timeout": _busy_slice(), "factory": _SQLiteConnection}


def open_engine(url: str, *, existing: bool = False) -> Engine:
    """An engine for `url`; nothing connects until the first session.

    For a SQLite file the parent folder is created (unless the file must be `existing`), foreign
    keys are switched on, and transactions are made to cover DDL too, so a failed migration leaves
    the file as it was.

    Raises:
        StorageError: the URL does not parse, names an unknown or missing driver, or an in-memory
            SQLite database (it would keep nothing); the folder of a SQLite file cannot be
            created; or the file must be `existing` and is not there (a mistyped ``--db`` read
            would otherwise look like an empty database, and leave one).
    """
    shown = describe_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        raise StorageError(f"{shown!r} is not a database URL: {one_line(e)}") from e
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if (
            database in {"", ":memory:"}
            or database.startswith("file::memory:")
            or parsed.query.get("mode") == "memory"
        ):
            # Optuna's heartbeat threads and each pooled connection would see a database of their
            # own, and nothing would outlive the command.
            raise StorageError(
                f"{shown}: an in-memory SQLite database keeps nothing; name a file (sqlite:///tuner.db, "
                "or its path)"
            )
        if existing:
            _check_file_exists(parsed)
        _create_parent_folder(parsed, shown)
        options["connect_args"] = sqlite_connect_args()
    else:
        # A server that restarted, or a proxy that dropped idle connections, leaves the pool's
        # connections dead: each is checked as it is taken and replaced, rather than failing
        # the next statement of a long-running worker or service.
        options["pool_pre_ping"] = True
    try:
        engine = sqlalchemy.create_engine(parsed, **options)
    except (ArgumentError, ImportError) as e:
        raise StorageError(f"cannot open database {shown}: {one_line(e)}") from e
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _configure_sqlite_connection)
        event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def close_engine(engine: Engine) -> None:
    """Release the engine's connections; for SQLite, first copy the ``-wal`` file into the
    database file (a TRUNCATE checkpoint, given up after a second if other processes are busy)."""
    if engine.dialect.name == "sqlite":
        with contextlib.suppress(SQLAlchemyError, sqlite3.Error):
            with engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA busy_timeout = 1000")
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()


def retrying(call: Callable[[], T], *, when: Callable[[BaseException], bool] = is_transient) -> T:
    """`call()`, called again while it fails with an error `when` accepts (by default the
    database's "busy, try again"), after a random wait that doubles each time; `ATTEMPTS` calls
    at most, the last one's error raised as it is. `call` must be safe to repeat: a failed
    transaction is rolled back before it raises.

    Optuna's storage goes through it too (`tuner.plan.search.Database`).
    """
    wait = FIRST_WAIT_S
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except Exception as e:
            if attempt == ATTEMPTS or not when(e):
                raise
        time.sleep(wait * random.uniform(0.5, 1.5))
        wait = min(2 * wait, MAX_WAIT_S)
    raise AssertionError("unreachable: the last attempt returns or raises")


def transaction(
    engine: Engine, work: Callable[[Session], T], *, write: bool = True, retry_integrity: bool = False
) -> T:
    """Run `work` in a transaction of its own and commit; retried when the database is busy.

    `work` may run more than once: it must do nothing but read and write through the session,
    and return what it built from the rows.

    Args:
        write: the transaction writes; on SQLite it then takes the write lock first.
        retry_integrity: also retry after a unique or foreign key violation, for an insert that
            another process may make at the same moment (the next try finds its row).

    Raises:
        StorageError: the database failed (`SQLAlchemyError`) or its file did (`OSError`), for
            good or on every try; the original error is the cause. Other errors pass through
            unchanged, after the rollback.
    """
    bind = engine.execution_options(**{_WRITE_OPTION: True}) if write else engine

    def attempt() -> T:
        session = Session(bind)
        try:
            result = work(session)
            session.commit()
            return result
        except BaseException:
            _rollback(session)
            raise
        finally:
            session.close()

    def again(error: BaseException) -> bool:
        return is_transient(error) or (retry_integrity and isinstance(error, IntegrityError))

    try:
        return retrying(attempt, when=again)
    except (SQLAlchemyError, OSError) as e:
        raise _failed(engine, e) from e


def _failed(engine: Engine, error: BaseException) -> StorageError:
    """The database's error in one line, naming it; for a SQLite file in a folder this process
    cannot write (a read-only mount), why even reads fail there."""
    message = f"database {describe_url(engine.url)}: {one_line(error)}"
    database = Path(engine.url.database or "") if engine.dialect.name == "sqlite" else None
    if database is not None and "unable to open database file" in message and database.is_file():
        folder = database.parent
        if not os.access(folder, os.W_OK):
            message += (
                f"; its folder {folder} cannot be written, where SQLite keeps the file's journal "
                f"({database.name}-wal, -shm) even to read it: make the folder writable, or copy the file"
            )
    return StorageError(message)


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose work is committed on exit and rolled back on any error; one try, for work
    that cannot run twice (`transaction` retries).

    Raises:
        StorageError: the database failed (`SQLAlchemyError`) or its file did (`OSError`); the
            original error is the cause. Other errors pass through unchanged, after the rollback.
    """
    session = Session(engine)
    try:
        yield session
        session.commit()
    except (SQLAlchemyError, OSError) as e:
        _rollback(session)
        raise _failed(engine, e) from e
    except BaseException:
        _rollback(session)
        raise
    finally:
        session.close()


@contextlib.contextmanager
def exclusive(engine: Engine) -> Iterator[None]:
    """Hold the database's one cross-process lock for the block: an advisory lock on PostgreSQL,
    a lock file beside a SQLite file (an in-memory database is one process's own). Waits for
    whoever holds it, another thread of this process included; a process that dies releases it.
    A thread that holds it already goes on (the block nests in the one that took it).

    Raises:
        StorageError: the lock cannot be taken (the lock file cannot be created, say).
    """
    key = engine.url.render_as_string(hide_password=False)
    held: set[str] = _held.__dict__.setdefault("keys", set())
    if key in held:
        yield
        return
    held.add(key)
    try:
        with _locked(engine):
            yield
    finally:
        held.discard(key)


#: The databases whose lock each thread holds (`exclusive`).
_held = threading.local()


@contextlib.contextmanager
def _locked(engine: Engine) -> Iterator[None]:
    shown = describe_url(engine.url)
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, shown):
            yield
        return
    database = engine.url.database or ""
    if engine.dialect.name != "sqlite" or database.startswith("file:"):
        yield
        return
    with _lock_file(Path(f"{database}.lock"), shown):
        yield


@contextlib.contextmanager
def _advisory_lock(engine: Engine, shown: str) -> Iterator[None]:
    try:
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
    except SQLAlchemyError as e:
        raise StorageError(f"database {shown}: cannot take the setup lock: {one_line(e)}") from e
    try:
        yield
    finally:
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        except SQLAlchemyError:
            connection.invalidate()  # closing the session releases the lock
        finally:
            connection.close()


@contextlib.contextmanager
def _lock_file(path: Path, shown: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: SQLite's own locks and the retries have to do
        yield
        return
    try:
        handle = open(path, "a+b")  # noqa: SIM115 - held open for the block
    except OSError as e:
        raise StorageError(f"database {shown}: cannot open its lock file {path}: {e}") from e
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing the file releases the lock


def _rollback(session: Session) -> None:
    # A rollback on a connection that broke must not hide the error that broke it.
    with contextlib.suppress(SQLAlchemyError, OSError):
        session.rollback()


def _check_file_exists(url: URL) -> None:
    database = url.database or ""
    if database.startswith("file:"):
        return
    path = Path(database)
    hint = "nothing is stored there yet (optimize stores runs); check --db or TUNER_DB"
    if not path.exists():
        raise StorageError(f"no database at {database}: {hint}")
    # SQLite takes an empty file for an empty database and a read would write the schema into it
    with contextlib.suppress(OSError):  # unreadable: connecting says why
        if path.is_file() and path.stat().st_size == 0:
            raise StorageError(f"{database} is an empty file: {hint}")


def _create_parent_folder(url: URL, shown: str) -> None:
    database = url.database or ""
    # `file:` URIs (with `uri=true`) name no folder of ours to create.
    if database.startswith("file:"):
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
    immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
