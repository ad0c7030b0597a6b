"""URLs, engines and transactions: every failure is a one-line StorageError; busy databases are
retried, SQLite files stay whole when copied, and setup happens once among processes."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.orm import Session

import storage.session
import storage.store
from storage import Store
from storage import default_url
from storage.models import VERSION_TABLE
from storage.models import ModelRow
from storage.models import ProfileRow
from storage.session import is_transient
from storage.session import open_engine
from storage.session import session_scope
from storage.session import transaction
from tuner.core.domain import Candidate
from tuner.core.domain import Run
from tuner.core.exceptions import StorageError


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("postgresql:/db", r"^'postgresql:/db' is not a database URL", id="unparsable"),
        pytest.param(
            "postgresql+psycopg://tuner:s3cret@127.0.0.1:port/db",
            r"^'postgresql\+psycopg://tuner:\*\*\*@127\.0\.0\.1:port/db' is not a database URL",
            id="bad-port",
        ),
        pytest.param(
            "nosuchdb://host/db", r"^cannot open database nosuchdb://host/db: ", id="unknown-driver"
        ),
        pytest.param(
            "sqlite:////proc/nope/tuner.db",
            r"^cannot create the folder of database sqlite:////proc/nope/tuner\.db: .*/proc/nope",
            id="unwritable-folder",
        ),
        pytest.param(
            # Port 1 refuses at once on any machine that runs the tests.
            "postgresql+psycopg://tuner:s3cret@127.0.0.1:1/tuner",
            r"^database postgresql\+psycopg://tuner:\*\*\*@127\.0\.0\.1:1/tuner: .*(refused|failed)",
            id="unreachable-server",
        ),
    ],
)
def test_a_database_that_cannot_be_opened_is_a_one_line_storage_error(url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message) as raised:
        Store(url)
    assert "\n" not in str(raised.value)
    assert "s3cret" not in str(raised.value)
    assert raised.value.__cause__ is not None


def test_a_folder_is_not_a_database_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=rf"^database sqlite:///{tmp_path}: unable to open database file$"):
        Store(f"sqlite:///{tmp_path}")


def test_the_folders_of_a_sqlite_file_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "tuner.db"
    Store(f"sqlite:///{path}").close()
    assert path.is_file()


def test_default_url_prefers_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNER_DB", "postgresql+psycopg://db.example/tuner")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_url() == "postgresql+psycopg://db.example/tuner"


def test_a_path_is_the_sqlite_file_it_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with Store("sub/runs.db") as store:
        assert store.url == f"sqlite:///{tmp_path / 'sub' / 'runs.db'}"
    assert (tmp_path / "sub" / "runs.db").is_file()
    monkeypatch.setenv("TUNER_DB", "runs.db")
    assert default_url() == f"sqlite:///{tmp_path / 'runs.db'}"


def test_default_url_is_sqlite_in_the_user_data_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TUNER_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_url() == f"sqlite:///{tmp_path}/device-map-tuner/tuner.db"

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unusable in ("", "relative/data"):
        monkeypatch.setenv("XDG_DATA_HOME", unusable)
        assert default_url() == f"sqlite:///{tmp_path}/home/.local/share/device-map-tuner/tuner.db"


def test_scope_commits_and_rolls_back(sqlite_url: str) -> None:
    Store(sqlite_url).close()
    engine = open_engine(sqlite_url)
    try:
        with session_scope(engine) as session:
            session.add(
                ModelRow(fingerprint="kept", name="m", architecture="A", dtype="float32", weights="w")
            )
        with pytest.raises(KeyError), session_scope(engine) as session:
            session.add(
                ModelRow(fingerprint="lost", name="m", architecture="A", dtype="float32", weights="w")
            )
            session.flush()
            raise KeyError("not a storage error: it passes through unchanged")
        with session_scope(engine) as session:
            assert session.scalars(sqlalchemy.select(ModelRow.fingerprint)).all() == ["kept"]
    finally:
        engine.dispose()


def test_sqlite_enforces_foreign_keys(sqlite_url: str) -> None:
    Store(sqlite_url).close()
    engine = open_engine(sqlite_url)
    orphan = ProfileRow(
        model_id=41,
        hardware_id=42,
        batch=1,
        seq=1,
        new_tokens=0,
        dtype="float32",
        full=False,
        seconds=0.0,
        graph_json="{}",
    )
    try:
        with (
            pytest.raises(StorageError, match="FOREIGN KEY constraint failed"),
            session_scope(engine) as session,
        ):
            session.add(orphan)
    finally:
        engine.dispose()


def _hold_write_lock(
    path: Path, seconds: float, taken: threading.Event, release: threading.Event | None = None
) -> None:
    """Another connection that holds SQLite's write lock on `path` for `seconds`, or until
    `release` is set."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        taken.set()
        (release or threading.Event()).wait(seconds)
        holder.execute("COMMIT")
    finally:
        holder.close()


def _model_row(fingerprint: str) -> ModelRow:
    return ModelRow(fingerprint=fingerprint, name="m", architecture="A", dtype="float32", weights="w")


def test_a_transaction_refused_as_busy_is_retried_until_it_goes_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tuner.db"
    Store(f"sqlite:///{path}").close()
    # SQLite answers "database is locked" after 50 ms; the other connection keeps the lock for
    # longer, so only the retries (with waits that double) get the row in.
    monkeypatch.setattr(storage.session, "BUSY_TIMEOUT_S", 0.05)
    engine = open_engine(f"sqlite:///{path}")
    taken = threading.Event()
    release = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 60, taken, release))
    holder.start()
    tries = []

    def work(session: Session) -> None:
        tries.append(1)
        if len(tries) > 1:  # the first try was refused: the lock goes, and this one gets it
            release.set()
            holder.join()
        session.add(_model_row("after-the-lock"))

    try:
        assert taken.wait(10)
        transaction(engine, work)
        with session_scope(engine) as session:
            assert session.scalars(sqlalchemy.select(ModelRow.fingerprint)).all() == ["after-the-lock"]
    finally:
        release.set()
        holder.join()
        engine.dispose()
    assert len(tries) == 2


def test_without_retries_a_busy_database_is_a_one_line_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tuner.db"
    Store(f"sqlite:///{path}").close()
    monkeypatch.setattr(storage.session, "BUSY_TIMEOUT_S", 0.05)
    monkeypatch.setattr(storage.session, "ATTEMPTS", 1)
    engine = open_engine(f"sqlite:///{path}")
    taken = threading.Event()
    release = threading.Event()  # held until the transaction gave up, however late it began
    holder = threading.Thread(target=_hold_write_lock, args=(path, 60, taken, release))
    holder.start()
    try:
        assert taken.wait(10)
        with pytest.raises(StorageError, match=r"^database sqlite:///.*: database is locked$") as raised:
            transaction(engine, lambda session: session.add(_model_row("refused")))
        assert is_transient(raised.value)  # through its cause
    finally:
        release.set()
        holder.join()
        engine.dispose()


class _Stopped(BaseException):
    """What a stopping signal raises: as the command line's handler raises KeyboardInterrupt, no
    `Exception`, which a retry of a busy transaction would take for the busy error it came in."""


def _raise_stopped(number: int, frame: object) -> None:
    raise _Stopped


def test_a_transaction_waiting_for_a_lock_is_stopped_by_a_signal_before_the_wait_runs_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite waits for a lock in C, where Python runs no signal handler: in one wait of the whole
    timeout, a stopped process stopped only once the wait ran out. Here the lock is held until
    the transaction has ended and the signal comes half a second into a wait of 20 s."""
    path = tmp_path / "tuner.db"
    Store(f"sqlite:///{path}").close()
    monkeypatch.setattr(storage.session, "BUSY_TIMEOUT_S", 20.0)
    engine = open_engine(f"sqlite:///{path}")
    taken, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 60, taken, release))
    holder.start()
    previous = signal.signal(signal.SIGUSR1, _raise_stopped)
    stop = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        assert taken.wait(10)
        begin = time.monotonic()
        stop.start()
        with pytest.raises(_Stopped):
            transaction(engine, lambda session: session.add(_model_row("stopped")))
        assert time.monotonic() - begin < 10  # the signal's half second, not the lock's 20
    finally:
        stop.cancel()
        release.set()
        holder.join()
        signal.signal(signal.SIGUSR1, previous)
        engine.dispose()
    with session_scope(open_engine(f"sqlite:///{path}")) as session:
        assert session.scalars(sqlalchemy.select(ModelRow.fingerprint)).all() == []


def test_a_transaction_that_read_and_then_writes_under_anothers_lock_is_refused_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite lets no transaction that has read wait for the write lock (another's write would make
    what it read stale): its refusal goes to the retries of the whole transaction at once, never
    spun on until the busy timeout. Here one try, the lock held until the transaction ended."""
    path = tmp_path / "tuner.db"
    Store(f"sqlite:///{path}").close()
    monkeypatch.setattr(storage.session, "BUSY_TIMEOUT_S", 20.0)
    monkeypatch.setattr(storage.session, "ATTEMPTS", 1)
    engine = open_engine(f"sqlite:///{path}")
    taken, release = threading.Event(), threading.Event()

    holder = threading.Thread(target=_hold_write_lock, args=(path, 60, taken, release))

    def read_then_write(session: Session) -> None:
        session.scalars(sqlalchemy.select(ModelRow.fingerprint)).all()
        holder.start()  # the other connection takes the write lock after this one has read
        assert taken.wait(10)
        session.add(_model_row("refused"))
        session.flush()

    try:
        begin = time.monotonic()
        with pytest.raises(StorageError, match=r"database is locked$"):
            transaction(engine, read_then_write, write=False)
        assert time.monotonic() - begin < 10  # at once, not after the 20 s a wait would last
    finally:
        release.set()
        holder.join()
        engine.dispose()


def test_a_lock_held_for_many_of_sqlites_own_waits_is_waited_for_within_one_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tuner.db"
    Store(f"sqlite:///{path}").close()
    monkeypatch.setattr(storage.session, "ATTEMPTS", 1)  # a busy answer would be an error
    engine = open_engine(f"sqlite:///{path}")
    taken = threading.Event()
    seconds = 8 * storage.session.BUSY_SLICE_S
    holder = threading.Thread(target=_hold_write_lock, args=(path, seconds, taken))
    holder.start()
    try:
        assert taken.wait(10)
        transaction(engine, lambda session: session.add(_model_row("after-the-lock")))
        with session_scope(engine) as session:
            assert session.scalars(sqlalchemy.select(ModelRow.fingerprint)).all() == ["after-the-lock"]
    finally:
        holder.join()
        engine.dispose()


def test_only_errors_that_mean_busy_are_transient(tmp_path: Path) -> None:
    assert not is_transient(ValueError("database is locked"))  # a message alone is not enough
    assert not is_transient(sqlite3.OperationalError("no such table: runs"))
    path = tmp_path / "t.db"
    first = sqlite3.connect(path, isolation_level=None, timeout=0)
    second = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        first.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as busy:
            second.execute("BEGIN IMMEDIATE")
    finally:
        first.close()
        second.close()
    assert is_transient(busy.value)
    wrapped = StorageError("wrapped")
    wrapped.__cause__ = busy.value
    assert is_transient(wrapped)


@pytest.mark.postgres
def test_a_postgres_serialization_failure_is_transient(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with pytest.raises(sqlalchemy.exc.DBAPIError) as failed, engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(1)"))
            connection.execute(
                sqlalchemy.text(
                    "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$"
                )
            )
    finally:
        engine.dispose()
    assert is_transient(failed.value)


def test_a_sqlite_database_is_in_wal_mode_and_a_copy_of_its_file_misses_nothing(
    tmp_path: Path, run: Run
) -> None:
    """WAL keeps commits in the -wal file until a checkpoint; each commit checkpoints, so the
    database file copied while other connections hold it open has every commit."""
    path = tmp_path / "tuner.db"
    url = f"sqlite:///{path}"
    holder = sqlite3.connect(path)  # another process's connection, open throughout
    try:
        assert holder.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        with Store(url) as store:
            run_id = store.create_run(run)
            store.add_candidates(run_id, [Candidate("trial 0", run.baselines[0].device_map, trial=0)])
            with contextlib.closing(sqlite3.connect(path)) as another:
                assert another.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert holder.execute("SELECT count(*) FROM runs").fetchone() == (1,)  # a reader too
            copy = tmp_path / "copy-while-open.db"
            copy.write_bytes(path.read_bytes())
        after_close = tmp_path / "copy-after-close.db"
        after_close.write_bytes(path.read_bytes())
    finally:
        holder.close()
    for copied in (copy, after_close):
        with Store(f"sqlite:///{copied}") as store:
            assert store.get_run(run_id).study_name == run.study_name
            assert [c.name for c in store.list_candidates(run_id)][-1] == "trial 0"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_exclusive_lets_one_holder_in_at_a_time(request: pytest.FixtureRequest, backend: str) -> None:
    url = request.getfixturevalue(f"{backend}_url")
    first, second = Store(url), Store(url)
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def hold() -> None:
        with first.exclusive():
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(10)
        waiter = threading.Thread(target=lambda: _enter(second, order))
        waiter.start()
        time.sleep(0.5)
        assert order == ["first in"]  # the second waits
        release.set()
        waiter.join(10)
        assert order == ["first in", "first out", "second in"]
    finally:
        release.set()
        holder.join()
        first.close()
        second.close()


def _enter(store: Store, order: list[str]) -> None:
    with store.exclusive():
        order.append("second in")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_processes_opening_a_fresh_database_at_once_create_its_schema_once(
    request: pytest.FixtureRequest, backend: str
) -> None:
    url = request.getfixturevalue(f"{backend}_url")
    code = f"from storage import Store; Store({url!r}).close()"
    workers = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(4)
    ]
    errors = [worker.communicate(timeout=120)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 4, errors
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            revisions = connection.execute(sqlalchemy.text(f"SELECT version_num FROM {VERSION_TABLE}"))
            assert revisions.scalars().all() == [storage.store.SCHEMA_REVISION]
    finally:
        engine.dispose()


def test_exclusive_nests_in_the_thread_that_holds_it(sqlite_url: str) -> None:
    with Store(sqlite_url) as store, store.exclusive():
        with store.exclusive():  # the workflows create a study inside a run's claim
            entered = threading.Event()
            other = threading.Thread(target=lambda: _wait_and_set(store, entered))
            other.start()
            assert not entered.wait(0.5)  # another thread still waits
        assert not entered.is_set()
    other.join(10)
    assert entered.is_set()


def _wait_and_set(store: Store, entered: threading.Event) -> None:
    with store.exclusive():
        entered.set()


def test_an_error_raised_while_handling_a_busy_one_is_not_transient(tmp_path: Path) -> None:
    """A fault in code that handles a busy error is not cured by running the transaction again."""
    path = tmp_path / "t.db"
    first = sqlite3.connect(path, isolation_level=None, timeout=0)
    second = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        first.execute("BEGIN IMMEDIATE")
        with pytest.raises(KeyError) as failed:
            try:
                second.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                raise KeyError("a fault in the handler")  # noqa: B904 - the implicit chaining is the case
    finally:
        first.close()
        second.close()
    assert isinstance(failed.value.__context__, sqlite3.OperationalError)
    assert is_transient(failed.value.__context__)
    assert not is_transient(failed.value)


def test_a_database_is_named_by_text_or_a_path_and_nothing_else(tmp_path: Path) -> None:
    with Store(tmp_path / "tuner.db") as by_path:  # type: ignore[arg-type]
        assert by_path.url == f"sqlite:///{tmp_path / 'tuner.db'}"
    with pytest.raises(StorageError, match=r"^a database is named by its URL or a file's path \(got 5\)$"):
        Store(5)  # type: ignore[arg-type]


@contextlib.contextmanager
def _read_only_folder(folder: Path) -> Iterator[None]:
    """`folder` made read-only for this process: by its mode, or (root writes whatever the mode)
    by a read-only bind mount over it."""
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)
        return
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0 or os.access(folder, os.W_OK):
        subprocess.run(["umount", str(folder)], capture_output=True)
        pytest.skip(f"root here cannot mount a folder read-only: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_file_in_a_folder_that_cannot_be_written_says_why_it_cannot_even_be_read(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    Store(folder / "tuner.db").close()  # WAL: a reader needs its -shm file beside it
    with _read_only_folder(folder), pytest.raises(StorageError) as refused:
        Store(folder / "tuner.db")
    assert str(refused.value) == (
        f"database sqlite:///{folder}/tuner.db: unable to open database file; its folder {folder} "
        "cannot be written, where SQLite keeps the file's journal (tuner.db-wal, -shm) even to read "
        "it: make the folder writable, or copy the file"
    )
