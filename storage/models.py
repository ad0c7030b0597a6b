"""The database tables, as SQLAlchemy 2.0 typed ORM classes. Private to `storage`.

Rows never leave the package: `storage.store` turns them into `tuner.core.domain` objects. Every change
here needs a migration in `storage/migrations/versions/`; `tests/storage_tests` checks that the
migrations build exactly these tables.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Collection

from sqlalchemy import BigInteger
from sqlalchemy import Boolean
from sqlalchemy import ColumnElement
from sqlalchemy import DateTime
from sqlalchemy import Double
from sqlalchemy import Enum
from sqlalchemy import ForeignKey
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import Text
from sqlalchemy import UniqueConstraint
from sqlalchemy import and_
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import Session
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship
from sqlalchemy.orm import selectinload

from tuner.core.domain import MAX_STORED_INT
from tuner.core.domain import Phase
from tuner.core.domain import RunStatus
from tuner.core.domain import Workload

#: Digests from `tuner.core.domain.stable_hash` are 16 hex digits; room for longer ones later.
MAX_FINGERPRINT_LENGTH = 64
#: Model names are local paths or hub ids; paths may be long.
MAX_MODEL_NAME_LENGTH = 4096
#: Class names, unit names, device names, host names.
MAX_NAME_LENGTH = 512
#: dtype names, weight sources, placement keys, hardware sources.
MAX_SHORT_STRING_LENGTH = 64
#: Predicted latencies this close (relative) are a tie when a run's winner is chosen: maps that
#: differ only in which of identical GPUs they use may sum their terms in another order.
_TIED_LATENCY = 1e-9
#: Tied candidates looked at for the tie-break; a search stores the same map under many trials.
_MOST_TIED = 1000
#: Optuna's own limit on study names (`MAX_INDEXED_STRING_LENGTH` in `optuna/storages/_rdb`).
MAX_STUDY_NAME_LENGTH = 512

#: Our own Alembic version table. Optuna keeps its studies in the same database and uses
#: Alembic's default `alembic_version` for its own schema, so the two must not share one.
VERSION_TABLE = "tuner_alembic_version"

# Named constraints let later migrations alter them, which SQLite's batch mode needs.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ModelRow(Base):
    """A model at a dtype, identified by `ModelGraph.fingerprint`."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(MAX_FINGERPRINT_LENGTH), unique=True)
    name: Mapped[str] = mapped_column(String(MAX_MODEL_NAME_LENGTH))
    architecture: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    dtype: Mapped[str] = mapped_column(String(MAX_SHORT_STRING_LENGTH))
    weights: Mapped[str] = mapped_column(String(MAX_SHORT_STRING_LENGTH))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=_now)

    @classmethod
    def find_by_fingerprint(cls, fingerprint: str, session: Session) -> ModelRow | None:
        return session.scalars(select(cls).where(cls.fingerprint == fingerprint)).one_or_none()


class HardwareRow(Base):
    """A machine, identified by `HardwareProfile.fingerprint`.

    `profile_json` is NULL while the machine is known only as the fingerprint of a stored profile.
    """

    __tablename__ = "hardware"

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(MAX_FINGERPRINT_LENGTH), unique=True)
    source: Mapped[str] = mapped_column(String(MAX_SHORT_STRING_LENGTH))
    host: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    profile_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=_now)

    @classmethod
    def find_by_fingerprint(cls, fingerprint: str, session: Session) -> HardwareRow | None:
        return session.scalars(select(cls).where(cls.fingerprint == fingerprint)).one_or_none()


class ProfileRow(Base):
    """A `ModelProfile`: one model measured on one machine for one workload."""

    __tablename__ = "profiles"
    __table_args__ = (UniqueConstraint("model_id", "hardware_id", "batch", "seq", "new_tokens", "dtype"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    hardware_id: Mapped[int] = mapped_column(ForeignKey("hardware.id"))
    batch: Mapped[int]
    seq: Mapped[int]
    new_tokens: Mapped[int]
    dtype: Mapped[str] = mapped_column(String(MAX_SHORT_STRING_LENGTH))
    full: Mapped[bool]
    seconds: Mapped[float] = mapped_column(Double)
    # The graph's edges depend on the traced workload, so the whole graph lives with the profile.
    graph_json: Mapped[str] = mapped_column(Text)
    # Why the times may not be the machine's (it was busy while they were taken); NULL when quiet.
    busy: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=_now)

    model: Mapped[ModelRow] = relationship()
    hardware: Mapped[HardwareRow] = relationship()
    units: Mapped[list[UnitProfileRow]] = relationship(
        back_populates="profile", cascade="all, delete-orphan", order_by="UnitProfileRow.position"
    )

    @classmethod
    def find_by_key(
        cls, model_fingerprint: str, hardware_fingerprint: str, workload: Workload, session: Session
    ) -> ProfileRow | None:
        statement = (
            select(cls)
            .join(cls.model)
            .join(cls.hardware)
            .where(
                ModelRow.fingerprint == model_fingerprint,
                HardwareRow.fingerprint == hardware_fingerprint,
                cls.batch == workload.batch,
                cls.seq == workload.seq,
                cls.new_tokens == workload.new_tokens,
                cls.dtype == workload.dtype,
            )
        )
        return session.scalars(statement).one_or_none()

    @classmethod
    def count(cls, session: Session) -> int:
        return session.scalar(select(func.count()).select_from(cls)) or 0


class UnitProfileRow(Base):
    """A `UnitProfile`; `position` keeps the order of `ModelProfile.units`."""

    __tablename__ = "unit_profiles"
    # The tuner looks a measurement up by (unit, device, phase); a second one would be ambiguous.
    __table_args__ = (UniqueConstraint("profile_id", "unit", "device", "phase"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id"))
    position: Mapped[int]
    unit: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    device: Mapped[str] = mapped_column(String(MAX_SHORT_STRING_LENGTH))
    phase: Mapped[Phase] = mapped_column(Enum(Phase, name="phase"))
    time_s: Mapped[float] = mapped_column(Double)
    activation_peak_bytes: Mapped[int] = mapped_column(BigInteger)
    output_bytes: Mapped[int] = mapped_column(BigInteger)
    cache_bytes: Mapped[int] = mapped_column(BigInteger)
    kv_bytes_per_token: Mapped[int] = mapped_column(BigInteger)
    measured_as: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    repeats: Mapped[int]

    profile: Mapped[ProfileRow] = relationship(back_populates="units")


class RunRow(Base):
    """A `Run`: one `tuner optimize`, its question (fingerprints, workload, constraints) and answer.

    Model and machine are kept by name and fingerprint rather than by foreign key: a run is a record
    of what was asked, and stays readable when the profile it used is replaced or the machine was
    only ever a spec file. Constraints and phase timings are JSON text.
    """

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_FINGERPRINT_LENGTH), index=True)
    model_name: Mapped[str] = mapped_column(String(MAX_MODEL_NAME_LENGTH))
    model_fingerprint: Mapped[str] = mapped_column(String(MAX_FINGERPRINT_LENGTH))
    hardware_name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    hardware_fingerprint: Mapped[str] = mapped_column(String(MAX_FINGERPRINT_LENGTH))
    batch: Mapped[int]
    seq: Mapped[int]
    new_tokens: Mapped[int]
    dtype: Mapped[str] = mapped_column(String(MAX_SHORT_STRING_LENGTH))
    max_memory_json: Mapped[str] = mapped_column(Text)
    pins_json: Mapped[str] = mapped_column(Text)
    exclude_json: Mapped[str] = mapped_column(Text)
    study_name: Mapped[str] = mapped_column(String(MAX_STUDY_NAME_LENGTH), unique=True)
    status: Mapped[RunStatus] = mapped_column(Enum(RunStatus, name="runstatus"))
    trials: Mapped[int]
    phase_seconds_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # When a process working on the run last renewed its lease, by the database's clock; NULL for
    # runs stored before leases existed (revision 0005), whose processes are long gone.
    heartbeat_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    # The trials a request through the queue asked for; NULL for runs of `optimize`. A run with
    # it is one the workers take, resume and finish (revision 0009).
    requested_trials: Mapped[int | None]
    # Why the run failed, in one line; NULL unless it did.
    error: Mapped[str | None] = mapped_column(Text)
    # The seconds a request through the queue allows its search, in all; NULL: no limit. The
    # search ends at `deadline_at`, set when the first worker starts it (revision 0010).
    requested_timeout_s: Mapped[float | None] = mapped_column(Double)
    deadline_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    # What the model takes as a prompt (`Run.inputs`); runs stored before revision 0012 read as text.
    inputs: Mapped[str] = mapped_column(String(MAX_SHORT_STRING_LENGTH), server_default="text")
    # Runs and candidates point at each other; this key is added after both tables exist.
    winner_id: Mapped[int | None] = mapped_column(
        ForeignKey("candidates.id", ondelete="SET NULL", use_alter=True)
    )

    candidates: Mapped[list[CandidateRow]] = relationship(
        back_populates="run",
        cascade="all, delete-orphan",
        foreign_keys="CandidateRow.run_id",
        passive_deletes=True,
    )
    # Set after the candidate row exists (post_update), since each row refers to the other.
    winner: Mapped[CandidateRow | None] = relationship(foreign_keys=[winner_id], post_update=True)
    baselines: Mapped[list[CandidateRow]] = relationship(
        primaryjoin=lambda: and_(RunRow.id == CandidateRow.run_id, CandidateRow.is_baseline.is_(True)),
        order_by=lambda: CandidateRow.id,
        viewonly=True,
    )

    @classmethod
    def find(cls, run_id: int, session: Session, *, lock: bool = False) -> RunRow | None:
        """The run with this id; with `lock`, its row stays locked until the transaction ends
        (``SELECT ... FOR UPDATE``; SQLite, which locks the whole file on write, ignores it)."""
        if not 0 < run_id <= MAX_STORED_INT:  # no such row, and past what the driver can send
            return None
        return session.get(cls, run_id, with_for_update=lock)

    @classmethod
    def newest_ids(cls, session: Session, *conditions: ColumnElement[bool], limit: int) -> list[int]:
        """The ids of `newest`, in its order, without loading any other column."""
        statement = (
            select(cls.id).where(*conditions).order_by(cls.created_at.desc(), cls.id.desc()).limit(limit)
        )
        return list(session.scalars(statement))

    @classmethod
    def newest(
        cls, session: Session, *conditions: ColumnElement[bool], limit: int, offset: int = 0
    ) -> list[RunRow]:
        """Runs meeting all `conditions`, newest first after skipping `offset`, winner and
        baselines loaded with them."""
        statement = (
            select(cls)
            .where(*conditions)
            .order_by(cls.created_at.desc(), cls.id.desc())
            .limit(limit)
            .offset(offset)
            .options(selectinload(cls.winner), selectinload(cls.baselines))
        )
        return list(session.scalars(statement))


class CandidateRow(Base):
    """A `Candidate` of a run: a baseline (accelerate's strategies, single devices, exact) or a trial.

    `latency_s` and `feasible` repeat what `prediction_json` holds so that SQL can sort and filter
    (`feasible` is false too for a map that failed when measured or breaks the run's pins); like
    Optuna's trial values, a latency that is not finite is stored as NULL.
    """

    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    is_baseline: Mapped[bool] = mapped_column(Boolean)
    trial: Mapped[int | None]
    device_map_json: Mapped[str] = mapped_column(Text)
    latency_s: Mapped[float | None] = mapped_column(Double)
    feasible: Mapped[bool] = mapped_column(Boolean)
    prediction_json: Mapped[str | None] = mapped_column(Text)
    measured_s: Mapped[float | None] = mapped_column(Double)
    # Why loading and running the map for real failed; NULL unless it did.
    measure_error: Mapped[str | None] = mapped_column(Text)
    # The exact solver's proven lower bound when its time limit stopped it; NULL otherwise.
    lower_bound_s: Mapped[float | None] = mapped_column(Double)
    # A map measured on the machine it was planned for: its prefill and one decode step, and why
    # the machine was busy meanwhile (NULL when quiet).
    measured_prefill_s: Mapped[float | None] = mapped_column(Double)
    measured_decode_s: Mapped[float | None] = mapped_column(Double)
    measure_busy: Mapped[str | None] = mapped_column(Text)
    # Which of the run's pins and excluded devices the map does not keep; NULL when it keeps them.
    breaks: Mapped[str | None] = mapped_column(Text)

    run: Mapped[RunRow] = relationship(back_populates="candidates", foreign_keys=[run_id])

    @classmethod
    def find_by_name(cls, run_id: int, name: str, session: Session) -> CandidateRow | None:
        return session.scalars(select(cls).where(cls.run_id == run_id, cls.name == name)).one_or_none()

    @classmethod
    def find_by_names(cls, run_id: int, names: Collection[str], session: Session) -> dict[str, CandidateRow]:
        statement = select(cls).where(cls.run_id == run_id, cls.name.in_(names))
        return {row.name: row for row in session.scalars(statement)}

    @classmethod
    def trial_count(cls, run_id: int, session: Session) -> int:
        """How many of the run's candidates are trials of its search."""
        counted = select(func.count()).where(
            cls.run_id == run_id, cls.trial.is_not(None), cls.is_baseline.is_(False)
        )
        return int(session.scalar(counted) or 0)

    @classmethod
    def of_run(cls, run_id: int, session: Session) -> list[CandidateRow]:
        return list(session.scalars(select(cls).where(cls.run_id == run_id).order_by(cls.id)))

    @classmethod
    def fastest_feasible(cls, run_id: int, session: Session, *, baselines: bool) -> CandidateRow | None:
        """The run's feasible candidate of least predicted latency. On a tie (within
        `_TIED_LATENCY`): the map on the lowest GPUs, then a trial before a baseline, then the first
        stored. Maps alike but for which of identical GPUs they use price alike, and a whole model
        on GPU 1 while GPU 0 stays empty is not what anyone loads (inputs sent to ``cuda`` land on
        GPU 0)."""
        statement = select(cls).where(cls.run_id == run_id, cls.feasible, cls.latency_s.is_not(None))
        if not baselines:
            statement = statement.where(cls.is_baseline.is_(False))
        fastest = session.scalars(statement.order_by(cls.latency_s, cls.is_baseline, cls.id).limit(1)).first()
        if fastest is None or fastest.latency_s is None:
            return fastest
        tied = statement.where(cls.latency_s <= fastest.latency_s * (1 + _TIED_LATENCY))
        rows = session.scalars(tied.order_by(cls.is_baseline, cls.id).limit(_MOST_TIED)).all()
        return min(rows, key=lambda row: (row.gpus_used(), row.is_baseline, row.id))

    def gpus_used(self) -> tuple[int, ...]:
        """The GPU indices the candidate's map places units on, in order."""
        placements = json.loads(self.device_map_json).get("placements", [])
        return tuple(sorted({int(place) for _, place in placements if str(place).isdigit()}))


class RunRequestRow(Base):
    """How a caller asked for a run, as `tuner.device_map` asks before it loads any model code.

    `Run.key` needs the model built by transformers and this machine described by torch, seconds
    of imports; a request key is a digest of what the caller gave (the config file's text, the
    weights' identity, this machine's identity, the workload and limits as written), so a tuned
    map is found again in well under a second. Several spellings of one request may name one run.
    """

    __tablename__ = "run_requests"

    key: Mapped[str] = mapped_column(String(MAX_FINGERPRINT_LENGTH), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)

    run: Mapped[RunRow] = relationship()
