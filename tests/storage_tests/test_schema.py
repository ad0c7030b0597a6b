"""Schema revisions: migrations build the ORM's tables, and outdated databases are refused."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy
from alembic import command
from alembic.script import ScriptDirectory

import storage.store
from storage import Store
from storage.models import VERSION_TABLE
from storage.models import Base
from tuner.core.domain import Candidate
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.domain import Workload
from tuner.core.exceptions import SchemaOutdatedError
from tuner.core.exceptions import StorageError

UPGRADE_ASSETS = Path(__file__).with_name("upgrade_assets")
#: This tuner's newest schema revision.
(HEAD,) = ScriptDirectory(str(storage.store.MIGRATIONS_DIR)).get_heads()

_PROBE_REVISION = """
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "probe"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("probe", sa.Column("id", sa.Integer(), primary_key=True))
    {after}


def downgrade() -> None:
    op.drop_table("probe")
"""


def _execute(url: str, statement: str) -> list[object]:
    """Run one statement in its own transaction; the first column of its rows, if it has any."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(sqlalchemy.text(statement))
            return list(result.scalars()) if result.returns_rows else []
    finally:
        engine.dispose()


def _table_names(url: str) -> set[str]:
    engine = sqlalchemy.create_engine(url)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _revision(url: str) -> list[object]:
    return _execute(url, f"SELECT version_num FROM {VERSION_TABLE}")


@pytest.fixture
def newer_migrations(tmp_path: Path) -> Path:
    """A copy of the shipped migrations plus a revision `probe`, as the next tuner would ship them."""
    folder = tmp_path / "migrations"
    shutil.copytree(storage.store.MIGRATIONS_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "versions" / "probe.py").write_text(_PROBE_REVISION.format(head=HEAD, after="pass"))
    return folder


def test_an_empty_database_is_brought_to_head(db_url: str) -> None:
    Store(db_url).close()
    assert _revision(db_url) == [HEAD]
    assert set(Base.metadata.tables) <= _table_names(db_url)


def test_migrations_build_exactly_the_orm_tables(store: Store, db_url: str) -> None:
    # `alembic check` autogenerates against the migrated database: nothing may be left to do.
    command.check(storage.store._alembic_config(db_url))


def test_optuna_tables_in_the_same_database_are_left_alone(db_url: str) -> None:
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=db_url, study_name="shared")
    optuna_revision = _execute(db_url, "SELECT version_num FROM alembic_version")

    with Store(db_url) as store:
        store.upgrade()
    assert _revision(db_url) == [HEAD]
    assert _execute(db_url, "SELECT version_num FROM alembic_version") == optuna_revision
    assert optuna.load_study(storage=db_url, study_name="shared").study_name == "shared"


def test_upgrade_at_head_changes_nothing(store: Store, db_url: str) -> None:
    store.upgrade()
    assert _revision(db_url) == [HEAD]


def test_a_revision_from_a_newer_tuner_is_refused(db_url: str) -> None:
    Store(db_url).close()
    _execute(db_url, f"UPDATE {VERSION_TABLE} SET version_num = 'f00dcafe'")
    with pytest.raises(
        SchemaOutdatedError, match=r"revision f00dcafe, which this tuner does not know.*newer"
    ):
        Store(db_url)
    with pytest.raises(SchemaOutdatedError, match="newer"):
        Store(db_url, check_schema=False).upgrade()
    assert _revision(db_url) == ["f00dcafe"]


def test_an_older_revision_asks_for_an_upgrade(
    db_url: str, newer_migrations: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store(db_url).close()
    assert _revision(db_url) == [HEAD]
    # A newer tuner: one more migration, and the revision it expects.
    monkeypatch.setattr(storage.store, "MIGRATIONS_DIR", newer_migrations)
    monkeypatch.setattr(storage.store, "SCHEMA_REVISION", "probe")

    with pytest.raises(
        SchemaOutdatedError,
        match=rf"revision {HEAD}, older than this tuner's probe: run `tuner db upgrade --db ",
    ):
        Store(db_url)

    upgrading = Store(db_url, check_schema=False)
    upgrading.upgrade()
    upgrading.close()
    assert _revision(db_url) == ["probe"]
    assert "probe" in _table_names(db_url)
    Store(db_url).close()


def test_a_failed_migration_leaves_the_database_as_it_was(
    db_url: str, newer_migrations: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store(db_url).close()
    monkeypatch.setattr(storage.store, "MIGRATIONS_DIR", newer_migrations)
    # The second statement fails after the first created a table.
    (newer_migrations / "versions" / "probe.py").write_text(
        _PROBE_REVISION.format(head=HEAD, after='op.execute("SELECT * FROM no_such_table")')
    )
    with pytest.raises(StorageError, match="no_such_table"):
        Store(db_url, check_schema=False).upgrade()
    assert _revision(db_url) == [HEAD]
    assert "probe" not in _table_names(db_url)


def test_the_queue_revision_downgrades_honestly_and_upgrades_again(db_url: str, run: Run) -> None:
    """Below 0009 no run is queued and, on PostgreSQL, the status type has no QUEUED value: a
    database downgraded to 0008 is what 0008 made, and upgrades again."""
    queued = dataclasses.replace(
        run, key="", study_name="queued", status=RunStatus.QUEUED, requested_trials=5
    )
    with Store(db_url) as store:
        kept = store.create_run(run)
        store.create_run(queued)
    config = storage.store._alembic_config(db_url)
    command.downgrade(config, "0008")
    assert _revision(db_url) == ["0008"]
    assert _execute(db_url, "SELECT study_name FROM runs") == [run.study_name]
    engine = sqlalchemy.create_engine(db_url)
    try:
        columns = {column["name"] for column in sqlalchemy.inspect(engine).get_columns("runs")}
    finally:
        engine.dispose()
    assert not {"requested_trials", "error"} & columns
    if db_url.startswith("postgresql"):
        labels = _execute(db_url, "SELECT unnest(enum_range(NULL::runstatus))::text")
        assert labels == ["RUNNING", "COMPLETE", "INTERRUPTED", "FAILED"]

    command.upgrade(config, "head")
    with Store(db_url) as store:
        assert store.get_run(kept).study_name == run.study_name
        again = store.get_run(store.create_run(queued))
    assert (again.status, again.requested_trials) == (RunStatus.QUEUED, 5)


def test_the_revision_a_store_expects_is_the_migrations_head() -> None:
    assert storage.store.SCHEMA_REVISION == HEAD


def test_opening_a_current_database_does_not_import_alembic(db_url: str) -> None:
    Store(db_url).close()
    opened = f"from storage import Store; Store({db_url!r}).close()"
    code = f"import sys; {opened}; print('alembic' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_tables_without_a_revision_are_refused(db_url: str) -> None:
    engine = sqlalchemy.create_engine(db_url)
    Base.metadata.create_all(engine)
    engine.dispose()
    with pytest.raises(SchemaOutdatedError, match="no schema revision"):
        Store(db_url)


@pytest.mark.parametrize("revision", sorted(path.stem for path in UPGRADE_ASSETS.glob("*.db")))
def test_a_database_of_every_revision_is_upgraded_and_read(revision: str, tmp_path: Path, run: Run) -> None:
    """`upgrade_assets/<revision>.db` was written by `create_db.py` at that revision; it stays readable."""
    path = tmp_path / f"{revision}.db"
    shutil.copy(UPGRADE_ASSETS / f"{revision}.db", path)
    url = f"sqlite:///{path}"
    if revision != HEAD:
        with pytest.raises(
            SchemaOutdatedError, match=rf"revision {revision}, older than this tuner's {HEAD}"
        ):
            Store(url)
    with Store(url, check_schema=False) as store:
        store.upgrade()
    assert _revision(url) == [HEAD]

    with Store(url) as store:
        assert store.count_profiles() == 1
        hardware = store.find_hardware("fa454b8987553412")
        assert hardware is not None and hardware.host == "asset-host"
        profile = store.find_profile(
            "asset-model-fp", hardware.fingerprint, Workload(batch=1, seq=16, new_tokens=4)
        )
        assert profile is not None
        assert profile.graph.unit_names == ("model.embed_tokens", "lm_head")
        assert len(profile.units) == 4

        stored = store.find_complete_run("asset-run-key")
        if revision == "0001":
            assert stored is None and store.latest_run() is None
        else:
            assert stored is not None and stored.study_name == "asset-study"
            assert stored.created_at == "2025-11-25T12:00:00+00:00"
            assert stored.winner == stored.baseline("auto")
            assert [c.name for c in store.list_candidates(stored.id)] == ["auto", "trial 0"]
            assert stored.inputs == "text"  # runs stored before revision 0012 are of text models
        if revision >= "0003":
            assert stored is not None and stored.winner is not None and stored.winner.measured_s == 0.75
            assert store.list_candidates(stored.id)[1].measure_error == "out of memory on cpu"
        if revision >= "0004":
            assert store.find_requested_run("asset-request-key") == stored
        if revision >= "0005":
            # Left running when the asset was made: its lease expired long ago.
            abandoned = store.find_run("asset-running-key", status=RunStatus.INTERRUPTED)
            assert abandoned is not None and abandoned.study_name == "asset-study-running"
            assert store.find_run("asset-running-key", status=RunStatus.RUNNING) is None

        # The upgraded database takes new runs.
        run_id = store.create_run(run)
        store.add_candidates(run_id, [Candidate("trial 0", run.baselines[0].device_map, trial=0)])
        assert store.get_run(run_id) == dataclasses.replace(
            run,
            id=run_id,
            trials=1,
            created_at=store.get_run(run_id).created_at,
            winner=run.baseline("auto"),  # running: its best map so far
        )
