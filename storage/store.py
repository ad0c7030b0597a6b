"""The tuner's database: profiles, hardware and tuning runs in, `tuner.core.domain` objects out."""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import math
import sys
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar

import sqlalchemy
from sqlalchemy import ColumnElement
from sqlalchemy import and_
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import inspect
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm import object_session

from storage.models import VERSION_TABLE
from storage.models import Base
from storage.models import CandidateRow
from storage.models import HardwareRow
from storage.models import ModelRow
from storage.models import ProfileRow
from storage.models import RunRequestRow
from storage.models import RunRow
from storage.models import UnitProfileRow
from storage.session import as_url
from storage.session import close_engine
from storage.session import default_url
from storage.session import describe_url
from storage.session import exclusive
from storage.session import one_line
from storage.session import open_engine
from storage.session import sqlite_connect_args
from storage.session import transaction
from tuner.core.codec import candidate_from_dict
from tuner.core.codec import graph_from_dict
from tuner.core.codec import hardware_from_dict
from tuner.core.codec import run_from_dict
from tuner.core.codec import to_dict
from tuner.core.domain import Candidate
from tuner.core.domain import HardwareProfile
from tuner.core.domain import ModelGraph
from tuner.core.domain import ModelProfile
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload
from tuner.core.exceptions import ConstraintError
from tuner.core.exceptions import RunNotFoundError
from tuner.core.exceptions import SchemaOutdatedError
from tuner.core.exceptions import StorageError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["HEARTBEAT_SECONDS", "LEASE_SECONDS", "SCHEMA_REVISION", "Store", "opened"]

T = TypeVar("T")

#: Alembic's script folder, shipped as package data.
MIGRATIONS_DIR = Path(__file__).with_name("migrations")

#: The newest migration's revision. Opening a current database compares against it with one query,
#: without importing Alembic (half a second): `tuner.device_map` answers from the database in less
#: than a second. A test checks it against the migrations' head.
SCHEMA_REVISION = "0012"

#: How often a process working on a run renews the run's lease (`Store.renew_lease`).
HEARTBEAT_SECONDS = 5.0
#: A running run whose lease is older than this lost every process that worked on it (killed, or
#: its machine gone): it reads as interrupted, and the same request resumes it. Several missed
#: renewals, so that a process slowed down by a busy machine or database keeps its run.
LEASE_SECONDS = 30.0
#: Running and interrupted runs of one key looked at for the newest of either (`Store.find_run`).
_RUNS_PER_KEY = 100
#: Why a run withdrawn from the queue failed (`Store.cancel_queued_run`).
CANCELLED = "cancelled before a worker took it"


class Store:
    """Profiles, hardware and runs of past tuning sessions, in any database SQLAlchemy can reach.

    Opening an empty database creates the tables. A database from an older tuner must be upgraded
    first (``tuner db upgrade``, which opens it with ``check_schema=False`` and calls `upgrade`).

    Several processes may share one database, a SQLite file included: every transaction is short
    and retried when the database is busy (`storage.session`), and creating the schema of a fresh
    database happens once, under `exclusive`.

    A run has a lease: the process that creates a run, and every process that works on it
    (`claim_run`), renews it every `HEARTBEAT_SECONDS` (`renew_lease`). A running run whose lease
    is older than `LEASE_SECONDS` lost its processes, and reads as interrupted.

    Args:
        url: a SQLAlchemy URL, or the path of a SQLite file; `default_url()` when omitted.
        check_schema: compare the database's schema revision with this tuner's and create the
            tables of an empty database. Turn off only to call `upgrade`.
        existing: only read a database that exists: a SQLite file that is not there is refused,
            not created (for reads: a mistyped path would look like an empty database).

    Raises:
        StorageError: the database cannot be reached, created or read.
        SchemaOutdatedError: the schema is older (upgrade it) or newer (upgrade the tuner).

    Example:
        >>> import tempfile
        >>> from storage import Store
        >>> from tuner.core.domain import Device, HardwareProfile
        >>> store = Store(f"{tempfile.mkdtemp()}/tuner.db")  # a path: the SQLite file it names
        >>> hardware = HardwareProfile(devices=(Device("cpu", "cpu", "Xeon", 2**34, 2**33),), host="ci")
        >>> store.save_hardware(hardware)
        >>> store.find_hardware(hardware.fingerprint) == hardware
        True
        >>> store.close()
    """

    def __init__(self, url: str | None = None, *, check_schema: bool = True, existing: bool = False) -> None:
        self._url = default_url() if url is None else as_url(url)
        self._shown = describe_url(self._url)
        self._engine = open_engine(self._url, existing=existing)
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

    @property
    def shown_url(self) -> str:
        """The database URL with its password hidden, fit for messages."""
        return self._shown

    @property
    def engine_kwargs(self) -> dict[str, Any]:
        """What another engine on this database needs to share it as this store does (SQLite's
        busy timeout and WAL set-up), as ``sqlalchemy.create_engine(url, **engine_kwargs)`` and
        Optuna's ``RDBStorage(url, engine_kwargs=...)`` take it."""
        if self._engine.dialect.name == "sqlite":
            return {"connect_args": sqlite_connect_args()}
        return {}

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the database's cross-process lock for the block (`storage.session.exclusive`): what
        runs inside happens in one process (and thread) at a time, whichever comes first. A block
        of the thread that holds it nests in the outer one.

        Raises:
            StorageError: the lock cannot be taken.
        """
        with exclusive(self._engine):
            yield

    def upgrade(self) -> tuple[str, ...]:
        """Bring the schema to this tuner's newest revision (`SCHEMA_REVISION`); a no-op when it
        is there already. Returns the revisions it was at before: none for an empty database.

        Raises:
            SchemaOutdatedError: the database was written by a newer tuner.
        """

        def work(session: Session) -> tuple[str, ...]:
            before = _current_revisions(session)
            _raise_if_newer(before, self._shown)
            _upgrade_without_commit(session, self._url)
            return before

        with exclusive(self._engine):
            return self._write(work)

    def check_writable(self) -> None:
        """Make sure this process can write the database, before work whose result it stores.

        A no-op write (the schema revision set to itself) in a write transaction: a read-only
        file or folder (SQLite), a read-only transaction or missing privileges (PostgreSQL) fail
        it at once, where they would otherwise fail the first real write, after minutes of
        profiling or measuring.

        Raises:
            StorageError: the database cannot be written, in one line naming it and the cause.
        """

        def work(session: Session) -> None:
            session.execute(sqlalchemy.text(f"UPDATE {VERSION_TABLE} SET version_num = version_num"))

        try:
            self._write(work)
        except StorageError as e:
            cause = one_line(e.__cause__) if e.__cause__ is not None else str(e)
            raise StorageError(
                f"database {self._shown} cannot be written ({cause}); nothing was done: make it (and its "
                "folder) writable, or name another database with --db or TUNER_DB"
            ) from e

    def save_profile(self, profile: ModelProfile) -> int:
        """Store `profile`, replacing any profile of the same model, hardware and workload.

        The model row is updated and the hardware row created (known by fingerprint only) as
        needed, all in one transaction: on failure the database is left as it was.

        Returns:
            The profile's id; a replaced profile keeps its id.
        """
        return self._write(
            lambda session: _set_profile_without_commit(session, profile), retry_integrity=True
        )

    def find_profile(
        self, model_fingerprint: str, hardware_fingerprint: str, workload: Workload
    ) -> ModelProfile | None:
        """The stored profile of a model on a machine for a workload, or None."""

        def work(session: Session) -> ModelProfile | None:
            row = ProfileRow.find_by_key(model_fingerprint, hardware_fingerprint, workload, session)
            return None if row is None else self._profile_from_row(row)

        return self._read(work)

    def find_profile_id(
        self, model_fingerprint: str, hardware_fingerprint: str, workload: Workload
    ) -> int | None:
        """The id of the stored profile of a model on a machine for a workload, or None."""

        def work(session: Session) -> int | None:
            row = ProfileRow.find_by_key(model_fingerprint, hardware_fingerprint, workload, session)
            return None if row is None else row.id

        return self._read(work)

    def save_hardware(self, hardware: HardwareProfile) -> None:
        """Store `hardware`, replacing what was stored under the same fingerprint."""
        self._write(lambda session: _set_hardware_without_commit(session, hardware), retry_integrity=True)

    def find_hardware(self, fingerprint: str) -> HardwareProfile | None:
        """The stored hardware profile with this fingerprint, or None."""

        def work(session: Session) -> HardwareProfile | None:
            row = HardwareRow.find_by_fingerprint(fingerprint, session)
            if row is None or row.profile_json is None:
                return None
            try:
                return hardware_from_dict(json.loads(row.profile_json))
            except ValueError as e:
                raise StorageError(
                    f"database {self._shown}: hardware {fingerprint} is unreadable: {e}"
                ) from e

        return self._read(work)

    def count_profiles(self) -> int:
        """How many model profiles are stored."""
        return self._read(ProfileRow.count)

    def create_run(self, run: Run) -> int:
        """Store a new run as given, normally `RunStatus.RUNNING` with its baselines priced; its
        lease starts now.

        Its baselines become the run's baseline candidates; a winner, if it has one already, is
        stored as `finish_run` stores it. `run.id` is ignored; an empty `run.created_at` means now.

        Returns:
            The run's id, for `add_candidates`, `finish_run` and `get_run`.

        Raises:
            ValueError: a number cannot be stored as JSON (NaN or infinity in a prediction or a
                timing), or `created_at` is not an ISO 8601 time. Nothing is stored.
            StorageError: the database refused the run, e.g. its study name is taken or two
                baselines share a name. Nothing is stored.
        """
        return self._write(lambda session: _add_run_without_commit(session, run, _database_now(session)))

    def add_candidates(
        self, run_id: int, candidates: Sequence[Candidate], *, skip_stored: bool = False
    ) -> None:
        """Store the maps a search tried (`Candidate.trial` set), in one batch.

        All or nothing: when one candidate cannot be stored, none of the batch is.

        Args:
            skip_stored: leave out candidates whose name the run has already (several workers
                storing the trials of one study), instead of failing.

        Raises:
            RunNotFoundError: no run has this id.
            ValueError: a candidate's prediction holds NaN or infinity.
            StorageError: the database refused a candidate, e.g. its name is already in the run.
        """

        def work(session: Session) -> None:
            row = self._find_run_row(session, run_id)
            _add_candidates_without_commit(session, row, candidates, skip_stored=skip_stored)
            # The run's count follows its stored trials while it runs, and after a killed process
            # (which never finishes the run) as well; finishing it sets the count it reached.
            row.trials = max(row.trials, CandidateRow.trial_count(run_id, session))

        self._write(work)

    def finish_run(
        self,
        run_id: int,
        *,
        status: RunStatus,
        winner: Candidate | None,
        trials: int,
        phase_seconds: dict[str, float],
    ) -> None:
        """Record how a run ended: its status, its winner, how many trials ran, each phase's seconds.

        An interrupted run can be resumed, given more candidates, and finished again; `trials` and
        `phase_seconds` replace what was stored. The winner is the run's candidate of the same
        name, updated to `winner` (a measured latency added by validation, say); a winner the run
        has no candidate of is added as one. A worker that is interrupted after another completed
        the run leaves it complete.

        Raises:
            RunNotFoundError: no run has this id.
            ValueError: `trials` is negative, or a number cannot be stored as JSON.
        """
        if trials < 0:
            raise ValueError(f"a run cannot have a negative number of trials ({trials})")
        seconds = _json(phase_seconds, "phase seconds")

        def work(session: Session) -> None:
            row = self._find_run_row(session, run_id, lock=True)
            if status is RunStatus.INTERRUPTED and row.status is RunStatus.COMPLETE:
                return
            row.status = status
            row.trials = trials
            row.phase_seconds_json = seconds
            _set_winner_without_commit(session, row, winner)

        self._write(work)

    def complete_run(
        self, run_id: int, *, trials: int, phase_seconds: dict[str, float], baselines_compete: bool
    ) -> None:
        """Mark a searched run complete, its winner the fastest feasible candidate stored for it.

        The winner is chosen by the database among every stored candidate, under a lock on the
        run's row, so that several workers searching one study and finishing in any order leave
        the best of all their trials, not the last finisher's view. `trials` never lowers the
        stored count (another worker may have counted more).

        Args:
            trials: complete trials of the study.
            baselines_compete: accelerate's maps and the exact optimum may win (they were the
                search's seeds); otherwise only the search's own trials may.

        Raises:
            RunNotFoundError: no run has this id.
            ValueError: `trials` is negative, or a number cannot be stored as JSON.
        """
        if trials < 0:
            raise ValueError(f"a run cannot have a negative number of trials ({trials})")
        seconds = _json(phase_seconds, "phase seconds")

        def work(session: Session) -> None:
            row = self._find_run_row(session, run_id, lock=True)
            row.status = RunStatus.COMPLETE
            row.error = None  # what a worker that was taken for dead stored as it failed
            row.trials = max(row.trials, trials)
            row.phase_seconds_json = seconds
            row.winner = CandidateRow.fastest_feasible(run_id, session, baselines=baselines_compete)

        self._write(work)

    def claim_run(self, run_id: int) -> tuple[Run, bool]:
        """Take a stored run up in this process (to resume it, or to search it beside other
        workers): a run that is not complete becomes running, and its lease starts again now.

        Returns:
            The run as it is now, and whether it was abandoned: no process had renewed its lease
            for `LEASE_SECONDS`, so none works on it (whatever it left running is dead).

        Raises:
            RunNotFoundError: no run has this id.
        """

        def work(session: Session) -> tuple[Run, bool]:
            row = self._find_run_row(session, run_id, lock=True)
            now = _database_now(session)
            abandoned = _lease_expired(row.heartbeat_at, now)
            if row.status is not RunStatus.COMPLETE:
                row.status = RunStatus.RUNNING
            row.heartbeat_at = now
            session.flush()
            return self._run_from_row(row, now), abandoned

        return self._write(work)

    def claim_queued_run(self) -> tuple[Run, bool] | None:
        """Take the oldest run of the queue that no process works on, for this process: a queued
        run, or one asked for through the queue (`Run.requested_trials`) that was interrupted or
        whose lease expired (its worker died). It becomes running, its lease starting now.

        Two processes never take one run: the row is locked as it is read, and a row another
        transaction holds is skipped (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's write
        transactions run one at a time).

        Returns:
            The run as taken and whether it was abandoned: no process renewed its lease for
            `LEASE_SECONDS` (its workers died, or were stopped a while ago: whatever they left
            running is dead). A run interrupted by one of its workers while another still
            searches it is not abandoned: this process joins the other. None when no run waits.
        """

        def work(session: Session) -> tuple[Run, bool] | None:
            now = _database_now(session)
            waiting = or_(
                RunRow.status == RunStatus.QUEUED,
                and_(RunRow.requested_trials.is_not(None), _status_is(RunStatus.INTERRUPTED, now, session)),
            )
            statement = select(RunRow).where(waiting).order_by(RunRow.id).limit(1)
            row = session.scalars(statement.with_for_update(skip_locked=True)).first()
            if row is None:
                return None
            abandoned = row.status is not RunStatus.QUEUED and _lease_expired(row.heartbeat_at, now)
            row.status = RunStatus.RUNNING
            row.heartbeat_at = now
            session.flush()
            return self._run_from_row(row, now), abandoned

        return self._write(work)

    def find_joinable_runs(self) -> list[Run]:
        """The runs of the queue that workers are searching now (running, their lease alive, and
        prepared: their study exists), oldest first: an idle worker may join one's search."""

        def work(session: Session) -> list[Run]:
            now = _database_now(session)
            statement = (
                select(RunRow)
                .where(
                    RunRow.requested_trials.is_not(None),
                    RunRow.key != "",
                    _status_is(RunStatus.RUNNING, now, session),
                )
                .order_by(RunRow.id)
                .limit(_RUNS_PER_KEY)
            )
            return [self._run_from_row(row, now) for row in session.scalars(statement)]

        return self._read(work)

    def adopt_run(self, run: Run) -> None:
        """Fill in the queued run `run.id` as its worker prepared it: key, fingerprints, workload
        (its dtype resolved), what the model takes (`Run.inputs`), limits and priced baselines,
        all in one transaction. It is running, its lease starting now; its study name, creation
        time and requested trials stay. A run with a time limit (`Run.requested_timeout_s`) gets
        its deadline: now plus the limit.

        Raises:
            RunNotFoundError: no run has this id.
            ValueError: a number cannot be stored as JSON. Nothing is stored.
        """
        data = to_dict(run)
        columns = {
            "key": run.key,
            "model_fingerprint": run.model_fingerprint,
            "hardware_fingerprint": run.hardware_fingerprint,
            "batch": run.workload.batch,
            "seq": run.workload.seq,
            "new_tokens": run.workload.new_tokens,
            "dtype": run.workload.dtype,
            "inputs": run.inputs,
            "max_memory_json": _json(data["max_memory"], "memory limits"),
            "pins_json": _json(data["pins"], "pins"),
            "exclude_json": _json(data["exclude"], "excluded devices"),
        }
        baselines = [_candidate_row(candidate, is_baseline=True) for candidate in run.baselines]

        def work(session: Session) -> None:
            row = self._find_run_row(session, run.id, lock=True)
            for name, value in columns.items():
                setattr(row, name, value)
            row.status = RunStatus.RUNNING
            row.heartbeat_at = _database_now(session)
            if row.requested_timeout_s is not None and row.deadline_at is None:
                row.deadline_at = row.heartbeat_at + datetime.timedelta(seconds=row.requested_timeout_s)
            for candidate in baselines:
                candidate.run_id = row.id
                session.add(candidate)

        self._write(work)

    def search_seconds_left(self, run_id: int) -> float | None:
        """The seconds left until the search of a run of the queue must end (0 once past), by the
        database's clock; None for a run without a time limit, or whose search has not begun.

        Raises:
            RunNotFoundError: no run has this id.
        """

        def work(session: Session) -> float | None:
            row = self._find_run_row(session, run_id)
            if row.deadline_at is None:
                return None
            return max(0.0, (_as_utc(row.deadline_at) - _database_now(session)).total_seconds())

        return self._read(work)

    def fail_run(self, run_id: int, error: str) -> None:
        """Mark a run failed, and why (the first line of `error`).

        Raises:
            RunNotFoundError: no run has this id.
        """
        line = " ".join(error.split()) or "failed"

        def work(session: Session) -> None:
            row = self._find_run_row(session, run_id, lock=True)
            row.status = RunStatus.FAILED
            row.error = line

        self._write(work)

    def cancel_run(self, run_id: int) -> Run:
        """Withdraw a run that no process works on, queued or interrupted, so that no worker
        takes or resumes it: it fails, saying it was cancelled, and stays on record with what
        it found (its id is never given to another run).

        Raises:
            RunNotFoundError: no run has this id.
            ConstraintError: a process works on the run, or it has ended; the message says so.
        """

        def work(session: Session) -> Run:
            # Locked as a worker's claim locks it: one of the two finds the other's status.
            row = self._find_run_row(session, run_id, lock=True)
            now = _database_now(session)
            run = self._run_from_row(row, now)
            if run.status not in (RunStatus.QUEUED, RunStatus.INTERRUPTED):
                raise ConstraintError(_not_cancellable(run))
            if row.winner is None:
                # A run whose workers died stored no winner: its best map so far is kept as one, as
                # it was shown while interrupted, rather than lost with the status that found it.
                row.winner = CandidateRow.fastest_feasible(row.id, session, baselines=True)
            row.status = RunStatus.FAILED
            row.error = (
                CANCELLED if run.status is RunStatus.QUEUED else f"cancelled after {run.trials} trials"
            )
            session.flush()
            return self._run_from_row(row, now)

        return self._write(work)

    def renew_lease(self, run_id: int) -> None:
        """Say that a process still works on the run: its lease starts again now. A run marked
        interrupted by another of its workers is running again; a complete run stays complete.

        Raises:
            RunNotFoundError: no run has this id.
        """

        def work(session: Session) -> None:
            row = self._find_run_row(session, run_id)
            if row.status in (RunStatus.RUNNING, RunStatus.INTERRUPTED):
                row.status = RunStatus.RUNNING
                row.heartbeat_at = _database_now(session)

        self._write(work)

    def record_measurements(
        self,
        run_id: int,
        measured: Sequence[Candidate],
        *,
        winner: str | None,
        phase_seconds: dict[str, float],
    ) -> None:
        """Record what loading and running some of a run's maps showed, and the winner it chose.

        Each of `measured` replaces the run's candidate of the same name: normally one that
        `list_candidates` returned, with `Candidate.measured_s` or `Candidate.measure_error` set.
        A map that failed is stored as infeasible. Everything is written in one transaction, so
        a run is either measured as a whole or not at all.

        Args:
            winner: the name of the candidate that becomes the run's winner; None keeps the
                winner as it is.
            phase_seconds: replaces what was stored (``measure`` added, say).

        Raises:
            RunNotFoundError: no run has this id.
            ValueError: a candidate or the winner names no candidate of the run, or a number
                cannot be stored as JSON. Nothing is stored.
        """
        names = {candidate.name for candidate in measured} | ({winner} if winner is not None else set())
        seconds = _json(phase_seconds, "phase seconds")

        def work(session: Session) -> None:
            row = self._find_run_row(session, run_id)
            rows = CandidateRow.find_by_names(run_id, names, session)
            missing = sorted(names - set(rows))
            if missing:
                raise ValueError(f"run {run_id} has no candidate {missing[0]!r}")
            for candidate in measured:
                stored = rows[candidate.name]
                for name, value in _candidate_values(candidate, is_baseline=stored.is_baseline).items():
                    setattr(stored, name, value)
            if winner is not None:
                row.winner = rows[winner]
            row.phase_seconds_json = seconds

        self._write(work)

    def get_run(self, run_id: int) -> Run:
        """The run with this id, with its winner and baselines (`list_candidates` has the trials).

        Raises:
            RunNotFoundError: no run has this id.
        """
        return self._read(lambda session: self._readable_run(session, run_id, _database_now(session)))

    def latest_run(self) -> Run | None:
        """The run created last, or None when no run is stored."""
        runs = self._runs(limit=1)
        return runs[0] if runs else None

    def find_complete_run(self, key: str) -> Run | None:
        """The newest complete run with this `Run.key` that has a winner to reuse; else None (a
        search without seeds whose trials all failed to fit, ``--trials 0 --no-seed``, completes
        without one, and must not answer the request from then on)."""
        complete = self._runs(
            RunRow.key == key, RunRow.status == RunStatus.COMPLETE, RunRow.winner_id.is_not(None), limit=1
        )
        return complete[0] if complete else None

    def find_run(self, key: str, *, status: RunStatus) -> Run | None:
        """The newest run with this `Run.key` and status (`INTERRUPTED` finds one to resume, a
        running run whose lease expired included)."""
        stored = {status} | ({RunStatus.RUNNING} if status is RunStatus.INTERRUPTED else set())
        runs = self._runs(RunRow.key == key, RunRow.status.in_(stored), limit=_RUNS_PER_KEY)
        found = [run for run in runs if run.status is status]  # as the leases make them
        return found[0] if found else None

    def find_unfinished_run(self, key: str) -> Run | None:
        """The newest run with this `Run.key` that is running or interrupted: the one a request
        with this key joins or resumes rather than start another."""
        unfinished = RunRow.status.in_((RunStatus.RUNNING, RunStatus.INTERRUPTED))
        runs = self._runs(RunRow.key == key, unfinished, limit=1)
        return runs[0] if runs else None

    def find_waiting_request(self, run: Run) -> Run | None:
        """The oldest run of the queue asked for with the same words as the queued `run` (model,
        hardware, workload, limits, trials, time limit) that no worker has finished: queued, running, or
        interrupted for a worker to resume; None when there is none. Call it under `exclusive`,
        with the `create_run` it stands for, so that equal requests made at once make one run."""
        waiting = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.INTERRUPTED)
        same = (
            RunRow.requested_trials == run.requested_trials,
            RunRow.requested_timeout_s.is_(None)
            if run.requested_timeout_s is None
            else RunRow.requested_timeout_s == run.requested_timeout_s,
            RunRow.model_name == run.model_name,
            RunRow.hardware_name == run.hardware_name,
            RunRow.batch == run.workload.batch,
            RunRow.seq == run.workload.seq,
            RunRow.new_tokens == run.workload.new_tokens,
            RunRow.dtype == run.workload.dtype,
            RunRow.status.in_(waiting),
        )
        # The limits are JSON text in the request's order (sorted once a worker prepared the run):
        # compared as values.
        found = [
            stored
            for stored in self._runs(*same, limit=_RUNS_PER_KEY)
            if (stored.max_memory, set(stored.pins), set(stored.exclude))
            == (run.max_memory, set(run.pins), set(run.exclude))
        ]
        return found[-1] if found else None

    def remember_request(self, request_key: str, run_id: int) -> None:
        """Record that a request with this key is answered by `run_id` (a later run replaces an
        earlier one: after `force`, the newest run answers).

        Raises:
            RunNotFoundError: no run has this id.
        """

        def work(session: Session) -> None:
            self._find_run_row(session, run_id)
            # An upsert: workers that finish one run together record the same request at once.
            dialect = session.get_bind().dialect.name
            if dialect in {"postgresql", "sqlite"}:
                module = importlib.import_module(f"sqlalchemy.dialects.{dialect}")
                upsert = module.insert(RunRequestRow).values(key=request_key, run_id=run_id)
                session.execute(upsert.on_conflict_do_update(index_elements=["key"], set_={"run_id": run_id}))
            else:
                session.merge(RunRequestRow(key=request_key, run_id=run_id))

        self._write(work, retry_integrity=True)

    def find_requested_run(self, request_key: str) -> Run | None:
        """The complete run that answered a request with this key, or None."""

        def work(session: Session) -> Run | None:
            row = session.get(RunRequestRow, request_key)
            if row is None or row.run.status is not RunStatus.COMPLETE:
                return None
            return self._run_from_row(row.run, _database_now(session))

        return self._read(work)

    def list_runs(
        self,
        *,
        model: str | None = None,
        hardware: str | None = None,
        status: RunStatus | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> list[Run]:
        """Runs newest first, at most `limit`, after skipping `offset` of them.

        Args:
            model: keep runs whose model name contains this text, ignoring case.
            hardware: keep runs whose hardware name contains this text, ignoring case.
            status: keep runs with this status as the leases make it (a running run whose lease
                expired is interrupted).
            limit: how many runs at most; at least 1.
            offset: how many of the newest matching runs to skip (paging); at least 0.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit})")
        if offset < 0:
            raise ValueError(f"offset must be at least 0 (got {offset})")
        conditions = []
        if model is not None:
            conditions.append(RunRow.model_name.icontains(model, autoescape=True))
        if hardware is not None:
            conditions.append(RunRow.hardware_name.icontains(hardware, autoescape=True))
        return self._runs(*conditions, status=status, limit=limit, offset=offset)

    def find_tuned_run(
        self,
        *,
        model: str,
        hardware: str,
        batch: int,
        seq: int,
        new_tokens: int | None,
        dtype: str | None,
        max_memory: dict[str, int],
        hardware_fingerprint: str | None = None,
    ) -> Run | None:
        """The newest complete run with a winner tuned for exactly this: the model and hardware as
        they were named, the workload, these memory limits, and no pins or excluded devices.

        Args:
            new_tokens: None matches any number of new tokens.
            dtype: None matches any dtype.
            hardware_fingerprint: the hardware's devices as they are now; None matches any.
        """
        conditions = [
            RunRow.status == RunStatus.COMPLETE,
            RunRow.winner_id.is_not(None),
            RunRow.model_name == model,
            RunRow.hardware_name == hardware,
            RunRow.batch == batch,
            RunRow.seq == seq,
            RunRow.pins_json == "[]",
            RunRow.exclude_json == "[]",
        ]
        if new_tokens is not None:
            conditions.append(RunRow.new_tokens == new_tokens)
        if dtype is not None:
            conditions.append(RunRow.dtype == dtype)
        if hardware_fingerprint is not None:
            conditions.append(RunRow.hardware_fingerprint == hardware_fingerprint)

        def work(session: Session) -> Run | None:
            # The limits of the newest matches first, as plain columns; then the one run.
            newest = (
                select(RunRow.id, RunRow.max_memory_json)
                .where(*conditions)
                .order_by(RunRow.created_at.desc(), RunRow.id.desc())
                .limit(_RUNS_PER_KEY)
            )
            for run_id, limits in session.execute(newest):
                if json.loads(limits) == max_memory:
                    (row,) = RunRow.newest(session, RunRow.id == run_id, limit=1)
                    return self._run_from_row(row, _database_now(session))
            return None

        return self._read(work)

    def browse_runs(
        self,
        *,
        model: str | None = None,
        hardware: str | None = None,
        status: RunStatus | None = None,
        limit: int = 20,
    ) -> tuple[list[Run], dict[int, str]]:
        """As `list_runs`, but a run whose rows cannot be read (a damaged candidate's map, say) is
        named rather than failing the others: (readable runs newest first, unreadable run id ->
        why, in one line)."""
        conditions = _run_filters(model, hardware, limit)

        def work(session: Session) -> tuple[list[Run], dict[int, str]]:
            now = _database_now(session)
            runs: list[Run] = []
            unreadable: dict[int, str] = {}
            where = [*conditions] if status is None else [*conditions, _status_is(status, now, session)]
            # ids first, then each run on its own: a column SQLAlchemy cannot convert (a status
            # that is no status) fails the one row that holds it
            for run_id in RunRow.newest_ids(session, *where, limit=limit):
                try:
                    runs.append(self._readable_run(session, run_id, now))
                except StorageError as exc:
                    unreadable[run_id] = str(exc)
            return runs, unreadable

        return self._read(work)

    def list_candidates(self, run_id: int) -> list[Candidate]:
        """Every candidate of a run: baselines as stored, then the others in trial order.

        Raises:
            RunNotFoundError: no run has this id.
        """

        def work(session: Session) -> list[Candidate]:
            row = self._find_run_row(session, run_id)
            rows = sorted(CandidateRow.of_run(row.id, session), key=_candidate_order)
            return [self._candidate_from_row(candidate) for candidate in rows]

        return self._read(work)

    def measured_phases(self, hardware_fingerprint: str) -> list[Candidate]:
        """The maps of runs on this hardware whose prefill was measured on it, quiet or busy
        (`Candidate.measure_busy` tells), newest first: one candidate per map of a run, since
        the names that share a measured map (a strategy, the winner, a trial) share its result."""

        def work(session: Session) -> list[Candidate]:
            statement = (
                select(CandidateRow)
                .join(RunRow, CandidateRow.run_id == RunRow.id)
                .where(
                    RunRow.hardware_fingerprint == hardware_fingerprint,
                    CandidateRow.measured_prefill_s.is_not(None),
                )
                .order_by(CandidateRow.id.desc())
            )
            seen: set[tuple[int, str]] = set()
            found = []
            for row in session.scalars(statement):
                if (row.run_id, row.device_map_json) not in seen:
                    seen.add((row.run_id, row.device_map_json))
                    found.append(self._candidate_from_row(row))
            return found

        return self._read(work)

    def close(self) -> None:
        """Release the database connections (for SQLite, after a checkpoint: see `storage.session`)."""
        close_engine(self._engine)

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _write(self, work: Callable[[Session], T], *, retry_integrity: bool = False) -> T:
        return transaction(self._engine, work, write=True, retry_integrity=retry_integrity)

    def _read(self, work: Callable[[Session], T]) -> T:
        return transaction(self._engine, work, write=False)

    def _open_schema(self) -> None:
        current = self._read(_current_revisions)
        if current == (SCHEMA_REVISION,):
            return
        if not current:
            # A fresh database: one process creates the tables while the others wait, then
            # find them made.
            with exclusive(self._engine):
                current = self._write(self._create_schema_without_commit)
        if current:
            _raise_if_newer(current, self._shown)
            _raise_if_older(current, self._shown)

    def _create_schema_without_commit(self, session: Session) -> tuple[str, ...]:
        """Create the tables of an empty database; the revisions found when it was not empty."""
        current = _current_revisions(session)
        if current:
            return current
        tables = set(inspect(session.connection()).get_table_names()) & set(Base.metadata.tables)
        if tables:
            raise SchemaOutdatedError(
                f"database {self._shown} has tuner tables ({', '.join(sorted(tables))}) but no "
                f"schema revision in {VERSION_TABLE}: the tuner's migrations did not make it; "
                "use a new database"
            )
        _upgrade_without_commit(session, self._url)
        return ()

    def _find_run_row(self, session: Session, run_id: int, *, lock: bool = False) -> RunRow:
        row = RunRow.find(run_id, session, lock=lock)
        if row is None:
            raise RunNotFoundError(f"no stored run has id {run_id} (database {self._shown})")
        return row

    def _runs(
        self, *conditions: ColumnElement[bool], status: RunStatus | None = None, limit: int, offset: int = 0
    ) -> list[Run]:
        def work(session: Session) -> list[Run]:
            now = _database_now(session)
            where = [*conditions] if status is None else [*conditions, _status_is(status, now, session)]
            rows = RunRow.newest(session, *where, limit=limit, offset=offset)
            return [self._run_from_row(row, now) for row in rows]

        return self._read(work)

    def _readable_run(self, session: Session, run_id: int, now: datetime.datetime) -> Run:
        """The run with this id, read on its own; a row whose columns cannot even be loaded is a
        `StorageError` that names it, as a row whose JSON cannot be read is."""
        try:
            return self._run_from_row(self._find_run_row(session, run_id), now)
        except (LookupError, ValueError, TypeError) as e:  # RunNotFoundError is a LookupError
            if isinstance(e, RunNotFoundError):
                raise
            raise StorageError(f"database {self._shown}: run {run_id} is unreadable: {e}") from e

    def _run_from_row(self, row: RunRow, now: datetime.datetime) -> Run:
        # The columns are assembled into `to_dict` form so that the codec checks every JSON field.
        status = row.status
        if status is RunStatus.RUNNING and _lease_expired(row.heartbeat_at, now):
            status = RunStatus.INTERRUPTED
        data = {
            "id": row.id,
            "key": row.key,
            "model_name": row.model_name,
            "model_fingerprint": row.model_fingerprint,
            "hardware_name": row.hardware_name,
            "hardware_fingerprint": row.hardware_fingerprint,
            "workload": {
                "batch": row.batch,
                "seq": row.seq,
                "new_tokens": row.new_tokens,
                "dtype": row.dtype,
            },
            "study_name": row.study_name,
            "status": status.value,
            "trials": row.trials,
            "created_at": _iso_utc(row.created_at),
            "requested_trials": row.requested_trials,
            "requested_timeout_s": row.requested_timeout_s,
            "error": row.error or "",
            "inputs": row.inputs,
        }
        try:
            data["max_memory"] = json.loads(row.max_memory_json)
            data["pins"] = json.loads(row.pins_json)
            data["exclude"] = json.loads(row.exclude_json)
            data["phase_seconds"] = json.loads(row.phase_seconds_json)
            winner = row.winner
            if winner is None and status in (RunStatus.RUNNING, RunStatus.INTERRUPTED):
                # Its winner is stored when its search ends; until then, and after its workers
                # died, the best map found so far is the fastest feasible one stored with it.
                session = object_session(row)
                if session is not None:
                    winner = CandidateRow.fastest_feasible(row.id, session, baselines=True)
            data["winner"] = None if winner is None else _candidate_data(winner)
            data["baselines"] = [_candidate_data(candidate) for candidate in row.baselines]
            return run_from_dict(data)
        except ValueError as e:  # json.JSONDecodeError included
            raise StorageError(f"database {self._shown}: run {row.id} is unreadable: {e}") from e

    def _candidate_from_row(self, row: CandidateRow) -> Candidate:
        try:
            return candidate_from_dict(_candidate_data(row))
        except ValueError as e:
            raise StorageError(
                f"database {self._shown}: candidate {row.name!r} of run {row.run_id} is unreadable: {e}"
            ) from e

    def _profile_from_row(self, row: ProfileRow) -> ModelProfile:
        try:
            return ModelProfile(
                graph=graph_from_dict(json.loads(row.graph_json)),
                workload=Workload(batch=row.batch, seq=row.seq, new_tokens=row.new_tokens, dtype=row.dtype),
                hardware_fingerprint=row.hardware.fingerprint,
                units=tuple(_unit_profile_from_row(unit) for unit in row.units),
                full=row.full,
                seconds=row.seconds,
                busy=row.busy or "",
            )
        except ValueError as e:
            raise StorageError(f"database {self._shown}: profile {row.id} is unreadable: {e}") from e


@contextlib.contextmanager
def opened(db: str | Store | None, *, existing: bool = False) -> Iterator[Store]:
    """The store `db` names for the block: `db` itself when it is an open `Store` (left open, as
    a long-running process holds one for all its calls), else one opened on the URL (None: the
    default database; `existing`: one that must be there already) and closed after."""
    if isinstance(db, Store):
        yield db
        return
    with Store(db, existing=existing) as store:
        yield store


def _not_cancellable(run: Run) -> str:
    """Why a run cannot be withdrawn, and what can be done instead."""
    if run.status is RunStatus.RUNNING:
        return (
            f"run {run.id} is being tuned: a run is cancelled while queued or interrupted; stop its "
            "workers first (Ctrl-C or SIGTERM interrupts it)"
        )
    state = "has failed" if run.status is RunStatus.FAILED else f"is {run.status.value}"
    return f"run {run.id} {state}: only a queued or interrupted run can be cancelled"


def _alembic_config(url: str) -> Config:
    from alembic.config import Config

    # Alembic's default stdout is sys.stdout as it was when alembic was first imported, which,
    # imported lazily, may be a stream that is closed since.
    config = Config(stdout=sys.stdout)
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # The config is a ConfigParser: a literal % (URL-escaped passwords) must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _current_revisions(session: Session) -> tuple[str, ...]:
    """The revisions in our version table (Alembic writes one row per head), or none."""
    connection = session.connection()
    if not inspect(connection).has_table(VERSION_TABLE):
        return ()
    table = sqlalchemy.table(VERSION_TABLE, sqlalchemy.column("version_num"))
    return tuple(sorted(connection.execute(select(table.c.version_num)).scalars()))


def _raise_if_newer(current: tuple[str, ...], shown: str) -> None:
    from alembic.script import ScriptDirectory

    known = {script.revision for script in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}
    unknown = [revision for revision in current if revision not in known]
    if unknown:
        raise SchemaOutdatedError(
            f"database {shown} has schema revision {unknown[0]}, which this tuner does not know: "
            "it was written by a newer version of device-map-tuner; upgrade the tuner to use it"
        )


def _raise_if_older(current: tuple[str, ...], shown: str) -> None:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory(str(MIGRATIONS_DIR)).get_heads()
    if set(current) != set(heads):
        raise SchemaOutdatedError(
            f"database {shown} has schema revision {', '.join(current)}, older than this tuner's "
            f"{', '.join(heads)}: run `tuner db upgrade --db {shown}`"
        )


def _upgrade_without_commit(session: Session, url: str) -> None:
    from alembic import command

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
    row.busy = profile.busy or None
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


def _add_run_without_commit(session: Session, run: Run, now: datetime.datetime) -> int:
    data = to_dict(run)
    row = RunRow(
        key=run.key,
        model_name=run.model_name,
        model_fingerprint=run.model_fingerprint,
        hardware_name=run.hardware_name,
        hardware_fingerprint=run.hardware_fingerprint,
        batch=run.workload.batch,
        seq=run.workload.seq,
        new_tokens=run.workload.new_tokens,
        dtype=run.workload.dtype,
        max_memory_json=_json(data["max_memory"], "memory limits"),
        pins_json=_json(data["pins"], "pins"),
        exclude_json=_json(data["exclude"], "excluded devices"),
        study_name=run.study_name,
        status=run.status,
        trials=run.trials,
        phase_seconds_json=_json(data["phase_seconds"], "phase seconds"),
        created_at=_parse_created_at(run.created_at),
        heartbeat_at=now,
        requested_trials=run.requested_trials,
        requested_timeout_s=run.requested_timeout_s,
        error=run.error or None,
        inputs=run.inputs,
    )
    row.candidates.extend(_candidate_row(candidate, is_baseline=True) for candidate in run.baselines)
    session.add(row)
    session.flush()
    _set_winner_without_commit(session, row, run.winner)
    session.flush()
    return row.id


def _add_candidates_without_commit(
    session: Session, run: RunRow, candidates: Sequence[Candidate], *, skip_stored: bool
) -> None:
    # Encode the whole batch before the first row goes in; then one INSERT over many rows.
    values = [
        _candidate_values(candidate, is_baseline=False) | {"run_id": run.id} for candidate in candidates
    ]
    if not values:
        return
    dialect = session.get_bind().dialect.name
    if skip_stored and dialect in {"postgresql", "sqlite"}:
        # Another worker may store the same trial at this moment: the database skips it.
        module = importlib.import_module(f"sqlalchemy.dialects.{dialect}")
        session.execute(module.insert(CandidateRow).on_conflict_do_nothing(), values)
        return
    if skip_stored:
        stored = CandidateRow.find_by_names(run.id, [value["name"] for value in values], session)
        values = [value for value in values if value["name"] not in stored]
    if values:
        session.execute(insert(CandidateRow), values)


def _set_winner_without_commit(session: Session, run: RunRow, winner: Candidate | None) -> None:
    if winner is None:
        run.winner = None
        return
    row = CandidateRow.find_by_name(run.id, winner.name, session)
    if row is None:
        row = _candidate_row(winner, is_baseline=False)
        # By id, not through `run.candidates`, which would load every trial of the run.
        row.run_id = run.id
        session.add(row)
    else:
        for name, value in _candidate_values(winner, is_baseline=row.is_baseline).items():
            setattr(row, name, value)
    run.winner = row


def _run_filters(model: str | None, hardware: str | None, limit: int) -> list[ColumnElement[bool]]:
    if limit < 1:
        raise ValueError(f"limit must be at least 1 (got {limit})")
    conditions = []
    if model is not None:
        conditions.append(RunRow.model_name.icontains(model, autoescape=True))
    if hardware is not None:
        conditions.append(RunRow.hardware_name.icontains(hardware, autoescape=True))
    return conditions


def _candidate_row(candidate: Candidate, *, is_baseline: bool) -> CandidateRow:
    return CandidateRow(**_candidate_values(candidate, is_baseline=is_baseline))


def _candidate_values(candidate: Candidate, *, is_baseline: bool) -> dict[str, Any]:
    prediction = candidate.prediction
    latency = None if prediction is None else prediction.latency_s
    return {
        "name": candidate.name,
        "is_baseline": is_baseline,
        "trial": candidate.trial,
        "device_map_json": _json(to_dict(candidate.device_map), f"candidate {candidate.name!r}: map"),
        # Like Optuna's `value_to_stored_repr`: a latency that is not finite is NULL.
        "latency_s": latency if latency is not None and math.isfinite(latency) else None,
        "feasible": candidate.feasible,
        "prediction_json": (
            None
            if prediction is None
            else _json(to_dict(prediction), f"candidate {candidate.name!r}: prediction")
        ),
        "measured_s": candidate.measured_s,
        "measure_error": candidate.measure_error or None,
        "lower_bound_s": candidate.lower_bound_s,
        "measured_prefill_s": candidate.measured_prefill_s,
        "measured_decode_s": candidate.measured_decode_s,
        "measure_busy": candidate.measure_busy or None,
        "breaks": candidate.breaks or None,
    }


def _candidate_order(row: CandidateRow) -> tuple[int, ...]:
    # Baselines in the order they were stored, then trials by number, then anything else.
    if row.is_baseline:
        return (0, 0, row.id)
    if row.trial is None:
        return (2, 0, row.id)
    return (1, row.trial, row.id)


def _candidate_data(row: CandidateRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "device_map": json.loads(row.device_map_json),
        "prediction": None if row.prediction_json is None else json.loads(row.prediction_json),
        "trial": row.trial,
        "measured_s": row.measured_s,
        "measure_error": row.measure_error or "",
        "lower_bound_s": row.lower_bound_s,
        "measured_prefill_s": row.measured_prefill_s,
        "measured_decode_s": row.measured_decode_s,
        "measure_busy": row.measure_busy or "",
        "breaks": row.breaks or "",
    }


def _json(value: object, what: str) -> str:
    try:
        # Strict JSON: NaN and infinity are not JSON, and PostgreSQL's json functions reject them.
        return json.dumps(value, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"{what} cannot be stored: {e}") from e


def _parse_created_at(text: str) -> datetime.datetime:
    if not text:
        return datetime.datetime.now(datetime.timezone.utc)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError as e:
        raise ValueError(f"run creation time {text!r} is not an ISO 8601 time") from e
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    # Stored in UTC: SQLite keeps no offset, and its text sorts in time order only in one zone.
    return moment.astimezone(datetime.timezone.utc)


def _database_now(session: Session) -> datetime.datetime:
    """The database's clock (UTC), so that processes on machines whose clocks differ judge leases
    alike. SQLite's CURRENT_TIMESTAMP keeps whole seconds, which would cut up to one from a run's
    time limit: its own clock is read to the millisecond instead."""
    if session.get_bind().dialect.name == "sqlite":
        clock: ColumnElement[Any] = func.strftime("%Y-%m-%d %H:%M:%f", "now", type_=sqlalchemy.DateTime)
    else:
        clock = func.current_timestamp()
    now = session.scalar(select(clock))
    if not isinstance(now, datetime.datetime):
        raise StorageError(f"the database gave {now!r} as the current time")
    return _as_utc(now)


def _status_is(status: RunStatus, now: datetime.datetime, session: Session) -> ColumnElement[bool]:
    """The runs with `status` as the leases make it (`_run_from_row`), in SQL."""
    cutoff = now - datetime.timedelta(seconds=LEASE_SECONDS)
    if session.get_bind().dialect.name == "sqlite":
        cutoff = cutoff.replace(tzinfo=None)  # SQLite keeps naive UTC times as text
    running = RunRow.status == RunStatus.RUNNING
    alive = RunRow.heartbeat_at >= cutoff
    if status is RunStatus.RUNNING:
        return and_(running, alive)
    if status is RunStatus.INTERRUPTED:
        return or_(
            RunRow.status == RunStatus.INTERRUPTED, and_(running, or_(RunRow.heartbeat_at.is_(None), ~alive))
        )
    return RunRow.status == status


def _lease_expired(heartbeat: datetime.datetime | None, now: datetime.datetime) -> bool:
    if heartbeat is None:
        return True
    return now - _as_utc(heartbeat) > datetime.timedelta(seconds=LEASE_SECONDS)


def _as_utc(moment: datetime.datetime) -> datetime.datetime:
    if moment.tzinfo is None:  # SQLite gives back naive times; they were stored in UTC
        return moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)


def _iso_utc(moment: datetime.datetime) -> str:
    return _as_utc(moment).isoformat()
