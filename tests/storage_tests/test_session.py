"""URLs, engines and the transaction scope: every failure is a one-line StorageError."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy

from storage import Store
from storage import default_url
from storage.models import ModelRow
from storage.models import ProfileRow
from storage.session import open_engine
from storage.session import session_scope
from tuner.core.exceptions import StorageError


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("not a url", r"^'not a url' is not a database URL", id="unparsable"),
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
