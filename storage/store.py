"""The tuner's database: profiles and hardware in, `tuner.domain` objects out."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from storage.models import VERSION_TABLE
from storage.models import Base
from storage.models import HardwareRow
from storage.models import ModelRow
from storage.models import ProfileRow
from storage.models import UnitProfileRow
from storage.session import default_url
from storage.session import describe_url
from storage.session import open_engine
from storage.session import session_scope
from tuner.codec import graph_from_dict
from tuner.codec import hardware_from_dict
from tuner.codec import to_dict
from tuner.domain import HardwareProfile
from tuner.domain import ModelGraph
from tuner.domain import ModelProfile
from tuner.domain import UnitProfile
from tuner.domain import Workload
from tuner.exceptions import SchemaOutdatedError
from tuner.exceptions import StorageError

__all__ = ["Store"]

#: Alembic's script folder, shipped as package data.
MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class Store:
    """Profiles and hardware of past tuning sessions, in any database SQLAlchemy can reach.

    Opening an empty database creates the tables. A database from an older tuner must be upgraded
    first (``tuner db upgrade``, which opens it with ``check_schema=False`` and calls `upgrade`).

    Args:
        url: a SQLAlchemy URL; `default_url()` when omitted.
        check_schema: compare the database's schema revision with this tuner's and create the
            tables of an empty database. Turn off only to call `upgrade`.

    Raises:
        StorageError: the database cannot be reached, created or read.
        SchemaOutdatedError: the schema is older (upgrade it) or newer (upgrade the tuner).

    Example:
        >>> from storage import Store
        >>> from tuner.domain import Device, HardwareProfile
        >>> store = Store("sqlite://")
        >>> hardware = HardwareProfile(devices=(Device("cpu", "cpu", "Xeon", 2**34, 2**33),), host="ci")
        >>> store.save_hardware(hardware)
        >>> store.find_hardware(hardware.fingerprint) == hardware
        True
        >>> store.close()
    """

    def __init__(self, url: str | None = None, *, check_schema: bool = True) -> None:
        self._url = default_url() if url is None else url
        self._shown = describe_url(self._url)
        self._engine = open_engine(self._url)
        if check_schema:
            try:
                self._open_schema()
            except BaseException:
                self._engine.dispose()
                raise

    @property
    def url(self) -> str:
        """The database URL as given, password included (Optuna's studies live in it too)."""
        return self._url

    def upgrade(self) -> None:
        """Bring the schema to this tuner's newest revision; a no-op when it is there already.

        Raises:
            SchemaOutdatedError: the database was written by a newer tuner.
        """
        with session_scope(self._engine) as session:
            _raise_if_newer(_current_revisions(session), self._shown)
            _upgrade_without_commit(session, self._url)

    def save_profile(self, profile: ModelProfile) -> int:
        """Store `profile`, replacing any profile of the same model, hardware and workload.

        The model row is updated and the hardware row created (known by fingerprint only) as
        needed, all in one transaction: on failure the database is left as it was.

        Returns:
            The profile's id; a replaced profile keeps its id.
        """
        with session_scope(self._engine) as session:
            return _set_profile_without_commit(session, profile)

    def find_profile(
        self, model_fingerprint: str, hardware_fingerprint: str, workload: Workload
    ) -> ModelProfile | None:
        """The stored profile of a model on a machine for a workload, or None."""
        with session_scope(self._engine) as session:
            row = ProfileRow.find_by_key(model_fingerprint, hardware_fingerprint, workload, session)
            return None if row is None else self._profile_from_row(row)

    def find_profile_id(
        self, model_fingerprint: str, hardware_fingerprint: str, workload: Workload
    ) -> int | None:
        """The id of the stored profile of a model on a machine for a workload, or None."""
        with session_scope(self._engine) as session:
            row = ProfileRow.find_by_key(model_fingerprint, hardware_fingerprint, workload, session)
            return None if row is None else row.id

    def save_hardware(self, hardware: HardwareProfile) -> None:
        """Store `hardware`, replacing what was stored under the same fingerprint."""
        with session_scope(self._engine) as session:
            _set_hardware_without_commit(session, hardware)

    def find_hardware(self, fingerprint: str) -> HardwareProfile | None:
        """The stored hardware profile with this fingerprint, or None."""
        with session_scope(self._engine) as session:
            row = HardwareRow.find_by_fingerprint(fingerprint, session)
            if row is None or row.profile_json is None:
                return None
            try:
                return hardware_from_dict(json.loads(row.profile_json))
            except ValueError as e:
                raise StorageError(
                    f"database {self._shown}: hardware {fingerprint} is unreadable: {e}"
                ) from e

    def count_profiles(self) -> int:
        """How many model profiles are stored."""
        with session_scope(self._engine) as session:
            return ProfileRow.count(session)

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _open_schema(self) -> None:
        with session_scope(self._engine) as session:
            current = _current_revisions(session)
            if current:
                _raise_if_newer(current, self._shown)
                _raise_if_older(current, self._shown)
                return
            tables = set(inspect(session.connection()).get_table_names()) & set(Base.metadata.tables)
            if tables:
                raise SchemaOutdatedError(
                    f"database {self._shown} has tuner tables ({', '.join(sorted(tables))}) but no "
                    f"schema revision in {VERSION_TABLE}: the tuner's migrations did not make it; "
                    "use a new database"
                )
            _upgrade_without_commit(session, self._url)

    def _profile_from_row(self, row: ProfileRow) -> ModelProfile:
        try:
            return ModelProfile(
                graph=graph_from_dict(json.loads(row.graph_json)),
                workload=Workload(batch=row.batch, seq=row.seq, new_tokens=row.new_tokens, dtype=row.dtype),
                hardware_fingerprint=row.hardware.fingerprint,
                units=tuple(_unit_profile_from_row(unit) for unit in row.units),
                full=row.full,
                seconds=row.seconds,
            )
        except ValueError as e:
            raise StorageError(f"database {self._shown}: profile {row.id} is unreadable: {e}") from e


def _alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # The config is a ConfigParser: a literal % (URL-escaped passwords) must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _current_revisions(session: Session) -> tuple[str, ...]:
    context = MigrationContext.configure(session.connection(), opts={"version_table": VERSION_TABLE})
    return tuple(context.get_current_heads())


def _raise_if_newer(current: tuple[str, ...], shown: str) -> None:
    known = {script.revision for script in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}
    unknown = [revision for revision in current if revision not in known]
    if unknown:
        raise SchemaOutdatedError(
            f"database {shown} has schema revision {unknown[0]}, which this tuner does not know: "
            "it was written by a newer version of device-map-tuner; upgrade the tuner to use it"
        )


def _raise_if_older(current: tuple[str, ...], shown: str) -> None:
    heads = ScriptDirectory(str(MIGRATIONS_DIR)).get_heads()
    if set(current) != set(heads):
        raise SchemaOutdatedError(
            f"database {shown} has schema revision {', '.join(current)}, older than this tuner's "
            f"{', '.join(heads)}: run `tuner db upgrade --db {shown}`"
        )


def _upgrade_without_commit(session: Session, url: str) -> None:
    config = _alembic_config(url)
    # env.py runs the migrations on the session's connection, inside its transaction.
    config.attributes["connection"] = session.connection()
    command.upgrade(config, "head")


def _set_profile_without_commit(session: Session, profile: ModelProfile) -> int:
    model = _set_model_without_commit(session, profile.graph)
    hardware = HardwareRow.find_by_fingerprint(profile.hardware_fingerprint, session)
    if hardware is None:
        hardware = HardwareRow(
            fingerprint=profile.hardware_fingerprint, source="", host="", profile_json=None
        )
        session.add(hardware)
    workload = profile.workload
    row = ProfileRow.find_by_key(profile.graph.fingerprint, profile.hardware_fingerprint, workload, session)
    if row is None:
        row = ProfileRow(
            model=model,
            hardware=hardware,
            batch=workload.batch,
            seq=workload.seq,
            new_tokens=workload.new_tokens,
            dtype=workload.dtype,
        )
        session.add(row)
    else:
        # Old unit rows must be gone before the new ones go in, or their unique key collides.
        row.units.clear()
        session.flush()
    row.full = profile.full
    row.seconds = profile.seconds
    row.graph_json = json.dumps(to_dict(profile.graph))
    row.units.extend(_unit_profile_row(position, unit) for position, unit in enumerate(profile.units))
    session.flush()
    return row.id


def _set_model_without_commit(session: Session, graph: ModelGraph) -> ModelRow:
    row = ModelRow.find_by_fingerprint(graph.fingerprint, session)
    if row is None:
        row = ModelRow(fingerprint=graph.fingerprint)
        session.add(row)
    row.name = graph.model_name
    row.architecture = graph.architecture
    row.dtype = graph.dtype
    row.weights = graph.weights
    return row


def _set_hardware_without_commit(session: Session, hardware: HardwareProfile) -> None:
    row = HardwareRow.find_by_fingerprint(hardware.fingerprint, session)
    if row is None:
        row = HardwareRow(fingerprint=hardware.fingerprint)
        session.add(row)
    row.source = hardware.source
    row.host = hardware.host
    row.profile_json = json.dumps(to_dict(hardware))


def _unit_profile_row(position: int, unit: UnitProfile) -> UnitProfileRow:
    return UnitProfileRow(
        position=position,
        unit=unit.unit,
        device=unit.device,
        phase=unit.phase,
        time_s=unit.time_s,
        activation_peak_bytes=unit.activation_peak_bytes,
        output_bytes=unit.output_bytes,
        cache_bytes=unit.cache_bytes,
        kv_bytes_per_token=unit.kv_bytes_per_token,
        measured_as=unit.measured_as,
        repeats=unit.repeats,
    )


def _unit_profile_from_row(row: UnitProfileRow) -> UnitProfile:
    return UnitProfile(
        unit=row.unit,
        device=row.device,
        phase=row.phase,
        time_s=row.time_s,
        activation_peak_bytes=row.activation_peak_bytes,
        output_bytes=row.output_bytes,
        cache_bytes=row.cache_bytes,
        kv_bytes_per_token=row.kv_bytes_per_token,
        measured_as=row.measured_as,
        repeats=row.repeats,
    )
