"""Tuning runs and their candidates in the Store, against a SQLite file and a PostgreSQL database."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
import time

import pytest
import sqlalchemy

from storage import LEASE_SECONDS
from storage import Store
from tests.conftest import priced
from tuner.core.domain import Candidate
from tuner.core.domain import DeviceMap
from tuner.core.domain import PhaseCost
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.exceptions import ConstraintError
from tuner.core.exceptions import RunNotFoundError
from tuner.core.exceptions import StorageError


def _trial(run: Run, number: int) -> Candidate:
    """Trial `number` of a search over `run`: units from `number % len` on go to the cpu."""
    names = [unit for unit, _ in run.baselines[0].device_map.placements]
    cut = number % len(names)
    dmap = DeviceMap(tuple((name, "0" if index < cut else "cpu") for index, name in enumerate(names)))
    return Candidate(
        f"trial {number}", dmap, priced(dmap, run.workload.new_tokens, scale=1 + number), trial=number
    )


def _copy(run: Run, number: int, **changes: object) -> Run:
    """Another run like `run` (its own study), with `changes`."""
    return dataclasses.replace(run, study_name=f"tuner-run-copy-{number}", **changes)  # type: ignore[arg-type]


def _candidate_rows(url: str) -> list[tuple[object, ...]]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            statement = "SELECT name, trial, is_baseline, latency_s, feasible FROM candidates ORDER BY id"
            return [tuple(row) for row in connection.execute(sqlalchemy.text(statement))]
    finally:
        engine.dispose()


def test_a_run_round_trips(store: Store, run: Run) -> None:
    before = datetime.datetime.now(datetime.timezone.utc)
    run_id = store.create_run(run)
    found = store.get_run(run_id)

    created = datetime.datetime.fromisoformat(found.created_at)
    assert created.utcoffset() == datetime.timedelta(0)
    assert before - datetime.timedelta(seconds=1) <= created <= datetime.datetime.now(datetime.timezone.utc)
    # Running, so its winner reads as the best map so far: 'auto', its one feasible baseline.
    assert found == dataclasses.replace(
        run, id=run_id, created_at=found.created_at, winner=run.baseline("auto")
    )
    assert found.baselines == run.baselines  # order kept, unpriced baseline included
    assert found.baseline("single:0").prediction == run.baseline("single:0").prediction
    vision = store.get_run(store.create_run(dataclasses.replace(run, inputs="vision", study_name="vit")))
    assert vision.inputs == "vision"


def test_a_given_creation_time_is_kept_in_utc(store: Store, run: Run) -> None:
    utc = _copy(run, 1, created_at="2025-11-25T12:30:00.250000+00:00")
    assert store.get_run(store.create_run(utc)) == dataclasses.replace(
        utc,
        id=store.latest_run().id,  # type: ignore[union-attr]
        winner=run.baseline("auto"),  # the best so far of a running run
    )
    paris = _copy(run, 2, created_at="2025-11-25T13:30:00+01:00")
    assert store.get_run(store.create_run(paris)).created_at == "2025-11-25T12:30:00+00:00"
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        store.create_run(_copy(run, 3, created_at="yesterday"))


def test_trials_are_listed_after_the_baselines_in_trial_order(store: Store, run: Run) -> None:
    run_id = store.create_run(run)
    store.add_candidates(run_id, [_trial(run, n) for n in (3, 0, 2)])
    store.add_candidates(run_id, [_trial(run, 1)])
    store.add_candidates(run_id, [])

    assert store.list_candidates(run_id) == [*run.baselines, *(_trial(run, n) for n in range(4))]
    assert store.get_run(run_id).baselines == run.baselines  # a run carries no trials


def test_finish_records_the_winner_trials_and_phase_times(store: Store, run: Run) -> None:
    run_id = store.create_run(run)
    store.add_candidates(run_id, [_trial(run, n) for n in range(3)])
    # Validation measured the winner after the search: the stored trial takes the measurement.
    winner = dataclasses.replace(_trial(run, 2), measured_s=0.0421)
    phases = {"profile": 1.25, "baselines": 0.5, "exact": 0.01, "search": 3.5}
    store.finish_run(run_id, status=RunStatus.COMPLETE, winner=winner, trials=3, phase_seconds=phases)

    found = store.get_run(run_id)
    assert found == dataclasses.replace(
        run,
        id=run_id,
        status=RunStatus.COMPLETE,
        winner=winner,
        trials=3,
        phase_seconds=phases,
        created_at=found.created_at,
    )
    candidates = store.list_candidates(run_id)
    assert candidates[len(run.baselines) + 2] == winner
    assert len(candidates) == len(run.baselines) + 3


def test_a_winner_the_run_has_not_seen_is_added_and_a_baseline_can_win(store: Store, run: Run) -> None:
    run_id = store.create_run(run)
    exact = Candidate("exact", run.baselines[0].device_map, run.baselines[0].prediction)
    store.finish_run(run_id, status=RunStatus.COMPLETE, winner=exact, trials=0, phase_seconds={})
    assert store.get_run(run_id).winner == exact
    assert store.list_candidates(run_id) == [*run.baselines, exact]

    store.finish_run(run_id, status=RunStatus.COMPLETE, winner=run.baselines[0], trials=0, phase_seconds={})
    found = store.get_run(run_id)
    assert found.winner == run.baselines[0] and found.baselines == run.baselines
    assert len(store.list_candidates(run_id)) == len(run.baselines) + 1

    store.finish_run(run_id, status=RunStatus.FAILED, winner=None, trials=0, phase_seconds={})
    assert store.get_run(run_id).winner is None


def test_create_stores_a_winner_given_with_the_run(store: Store, run: Run) -> None:
    finished = dataclasses.replace(run, status=RunStatus.COMPLETE, winner=run.baselines[0], trials=0)
    run_id = store.create_run(finished)
    assert store.get_run(run_id) == dataclasses.replace(
        finished, id=run_id, created_at=store.get_run(run_id).created_at
    )
    assert len(store.list_candidates(run_id)) == len(run.baselines)


def test_latency_and_feasibility_are_columns_with_null_for_no_finite_latency(
    db_url: str, store: Store, run: Run
) -> None:
    run_id = store.create_run(run)
    rows = _candidate_rows(db_url)
    auto, single, sequential = (run.baseline(name) for name in ("auto", "single:0", "sequential"))
    assert auto.prediction is not None and single.prediction is not None
    with pytest.raises(ConstraintError, match="no baseline 'nope'; it priced: auto, single:0, sequential"):
        run.baseline("nope")
    assert rows == [
        ("auto", None, True, auto.prediction.latency_s, True),
        ("single:0", None, True, single.prediction.latency_s, False),
        ("sequential", None, True, None, False),
    ]
    # A latency that overflows to +inf is stored as NULL, like Optuna's infinite trial values.
    huge = dataclasses.replace(auto.prediction, prefill=PhaseCost(1e308, 1e308, 0.0))
    assert math.isinf(huge.latency_s)
    store.add_candidates(run_id, [Candidate("trial 0", auto.device_map, huge, trial=0)])
    assert _candidate_rows(db_url)[-1] == ("trial 0", 0, False, None, True)
    assert store.list_candidates(run_id)[-1].prediction == huge


def test_latest_run_is_the_newest(store: Store, run: Run) -> None:
    assert store.latest_run() is None
    store.create_run(run)
    newest = store.create_run(_copy(run, 1))
    # Created later, but said to have started earlier: the creation time decides.
    store.create_run(_copy(run, 2, created_at="2020-01-01T00:00:00+00:00"))
    latest = store.latest_run()
    assert latest is not None and latest.id == newest


def test_list_runs_filters_orders_and_limits(store: Store, run: Run) -> None:
    specs = [
        ("/models/Tiny-Llama", "this machine"),
        ("meta-llama/Llama-3.1-8B", "dgx-h100.yaml"),
        ("/models/tiny-llama", "DGX-H100.yaml"),
        ("gpt2", "this machine"),
        ("100%_model", "this machine"),
    ]
    ids = [
        store.create_run(
            _copy(
                run,
                number,
                model_name=model,
                hardware_name=hardware,
                created_at=f"2025-11-2{number}T00:00:00+00:00",
            )
        )
        for number, (model, hardware) in enumerate(specs)
    ]

    def listed(**filters: object) -> list[int]:
        return [found.id for found in store.list_runs(**filters)]  # type: ignore[arg-type]

    assert listed() == ids[::-1]
    assert listed(limit=2) == [ids[4], ids[3]]
    assert listed(model="TINY-llama") == [ids[2], ids[0]]
    assert listed(model="llama") == [ids[2], ids[1], ids[0]]
    assert listed(hardware="dgx") == [ids[2], ids[1]]
    assert listed(model="tiny", hardware="dgx") == [ids[2]]
    # LIKE's wildcards are plain text in a filter.
    assert listed(model="0%_") == [ids[4]]
    assert listed(model="%") == [ids[4]]
    assert listed(model="mistral") == []
    listed_run = store.list_runs(model="gpt2")[0]
    assert listed_run.baselines == run.baselines and listed_run.winner == run.baseline("auto")  # so far
    with pytest.raises(ValueError, match="limit must be at least 1"):
        store.list_runs(limit=0)


def test_a_remembered_request_finds_its_run_once_complete_and_the_newest_run_answers(
    store: Store, run: Run
) -> None:
    first = store.create_run(_copy(run, 1))
    store.remember_request("request", first)
    assert store.find_requested_run("request") is None  # still running
    store.finish_run(first, status=RunStatus.COMPLETE, winner=run.baselines[0], trials=0, phase_seconds={})
    found = store.find_requested_run("request")
    assert found is not None and found.id == first and found.winner == run.baselines[0]

    second = store.create_run(_copy(run, 2))
    store.finish_run(second, status=RunStatus.COMPLETE, winner=run.baselines[1], trials=0, phase_seconds={})
    store.remember_request("request", second)
    found = store.find_requested_run("request")
    assert found is not None and found.id == second
    assert store.find_requested_run("another request") is None
    with pytest.raises(RunNotFoundError):
        store.remember_request("request", 999)


def test_find_complete_run_ignores_runs_that_did_not_complete(store: Store, run: Run) -> None:
    assert store.find_complete_run(run.key) is None
    older = store.create_run(_copy(run, 1, created_at="2025-11-20T00:00:00+00:00"))
    complete = store.create_run(_copy(run, 2, created_at="2025-11-21T00:00:00+00:00"))
    for run_id in (older, complete):
        store.finish_run(
            run_id, status=RunStatus.COMPLETE, winner=run.baselines[0], trials=0, phase_seconds={}
        )
    for number, status in enumerate((RunStatus.INTERRUPTED, RunStatus.FAILED), start=3):
        run_id = store.create_run(_copy(run, number))
        store.finish_run(run_id, status=status, winner=run.baselines[0], trials=0, phase_seconds={})
    store.create_run(_copy(run, 5))  # still running
    store.create_run(_copy(run, 6, key="another-key", status=RunStatus.COMPLETE))

    found = store.find_complete_run(run.key)
    assert found is not None and found.id == complete
    assert found.winner == run.baselines[0] and found.status is RunStatus.COMPLETE
    assert store.find_complete_run("no-such-key") is None

    # Completed without a winner (no seeds, no trial that fits): nothing to reuse.
    empty = store.create_run(_copy(run, 7, created_at="2025-11-29T00:00:00+00:00"))
    store.complete_run(empty, trials=0, phase_seconds={}, baselines_compete=False)
    assert store.get_run(empty).winner is None
    assert store.find_complete_run(run.key) == found


def test_a_run_its_last_worker_completes_carries_no_error_a_stale_worker_left(store: Store, run: Run) -> None:
    """A worker taken for dead may fail the run as it wakes while another one tunes it on: the
    run that worker completes has no error left on it."""
    run_id = store.create_run(run)
    store.fail_run(run_id, "unexpected ValueError: Cannot tell a FAIL trial.")
    assert store.get_run(run_id).status is RunStatus.FAILED
    store.complete_run(run_id, trials=0, phase_seconds={}, baselines_compete=True)
    completed = store.get_run(run_id)
    assert completed.status is RunStatus.COMPLETE and completed.error == ""


# past PostgreSQL's integer, and past SQLite's: the driver cannot even send them
@pytest.mark.parametrize("unknown", [4242, 2**31, 10**30])
def test_an_unknown_id_raises_run_not_found(store: Store, run: Run, unknown: int) -> None:
    store.create_run(run)
    calls = {
        "get_run": lambda: store.get_run(unknown),
        "list_candidates": lambda: store.list_candidates(unknown),
        "add_candidates": lambda: store.add_candidates(unknown, [_trial(run, 0)]),
        "finish_run": lambda: store.finish_run(
            unknown, status=RunStatus.COMPLETE, winner=None, trials=0, phase_seconds={}
        ),
        "cancel_run": lambda: store.cancel_run(unknown),
        "claim_run": lambda: store.claim_run(unknown),
    }
    for name, call in calls.items():
        with pytest.raises(RunNotFoundError, match=rf"^no stored run has id {unknown} \(database ") as raised:
            call()
        assert "\n" not in str(raised.value), name
        assert isinstance(raised.value, LookupError)
    assert _candidate_count(store) == len(run.baselines)


def _candidate_count(store: Store) -> int:
    latest = store.latest_run()
    return 0 if latest is None else len(store.list_candidates(latest.id))


def test_a_failed_batch_leaves_the_run_s_candidates_as_they_were(store: Store, run: Run) -> None:
    run_id = store.create_run(run)
    store.add_candidates(run_id, [_trial(run, 0), _trial(run, 1)])
    before = store.list_candidates(run_id)

    # A name the run already has, after two good ones: the database refuses the third row.
    duplicate = [_trial(run, 2), _trial(run, 3), dataclasses.replace(_trial(run, 4), name="trial 1")]
    with pytest.raises(StorageError, match=r"^database .*(UNIQUE|unique)") as raised:
        store.add_candidates(run_id, duplicate)
    assert "\n" not in str(raised.value)
    assert store.list_candidates(run_id) == before

    # NaN is not JSON: refused before anything is written.
    prediction = _trial(run, 6).prediction
    assert prediction is not None
    nan = dataclasses.replace(prediction, decode=PhaseCost(math.nan, 0.0, 0.0))
    broken = [_trial(run, 5), dataclasses.replace(_trial(run, 6), prediction=nan)]
    with pytest.raises(ValueError, match=r"candidate 'trial 6': prediction cannot be stored"):
        store.add_candidates(run_id, broken)
    assert store.list_candidates(run_id) == before

    store.add_candidates(run_id, duplicate[:2])
    assert len(store.list_candidates(run_id)) == len(before) + 2


def test_a_failed_create_stores_nothing(store: Store, run: Run) -> None:
    store.create_run(run)
    with pytest.raises(StorageError, match=r"(UNIQUE|unique)"):
        store.create_run(dataclasses.replace(run, key="another-key"))  # the same study name
    twice = dataclasses.replace(run, study_name="another-study", baselines=run.baselines + run.baselines[:1])
    with pytest.raises(StorageError, match=r"(UNIQUE|unique)"):
        store.create_run(twice)
    with pytest.raises(ValueError, match="phase seconds cannot be stored"):
        store.create_run(_copy(run, 1, phase_seconds={"search": math.inf}))
    assert [found.study_name for found in store.list_runs()] == [run.study_name]
    assert _candidate_count(store) == len(run.baselines)


def test_an_interrupted_run_is_resumed_and_finished_later(db_url: str, run: Run) -> None:
    with Store(db_url) as store:
        run_id = store.create_run(run)
        store.add_candidates(run_id, [_trial(run, n) for n in range(2)])
        store.finish_run(
            run_id,
            status=RunStatus.INTERRUPTED,
            winner=_trial(run, 1),
            trials=2,
            phase_seconds={"search": 1.5},
        )

    with Store(db_url) as store:
        assert store.find_complete_run(run.key) is None
        interrupted = store.find_run(run.key, status=RunStatus.INTERRUPTED)
        assert interrupted is not None and interrupted.id == run_id
        assert interrupted.winner == _trial(run, 1) and interrupted.trials == 2
        store.add_candidates(run_id, [_trial(run, n) for n in range(2, 4)])
        store.finish_run(
            run_id,
            status=RunStatus.COMPLETE,
            winner=_trial(run, 3),
            trials=4,
            phase_seconds={"search": 2.75},
        )

        found = store.find_complete_run(run.key)
        assert found is not None and found.id == run_id
        assert (found.winner, found.trials, found.phase_seconds) == (_trial(run, 3), 4, {"search": 2.75})
        assert store.find_run(run.key, status=RunStatus.INTERRUPTED) is None
        assert store.list_candidates(run_id)[len(run.baselines) :] == [_trial(run, n) for n in range(4)]


def test_measurements_and_the_measured_winner_are_recorded_together(
    db_url: str, store: Store, run: Run
) -> None:
    run_id = store.create_run(run)
    store.add_candidates(run_id, [_trial(run, n) for n in range(3)])
    store.finish_run(run_id, status=RunStatus.COMPLETE, winner=_trial(run, 0), trials=3, phase_seconds={})
    auto = dataclasses.replace(run.baseline("auto"), measured_s=0.0125)
    failed = dataclasses.replace(_trial(run, 1), measure_error="out of memory on cpu")
    phases = {"search": 3.5, "measure": 2.25}
    store.record_measurements(run_id, [auto, failed], winner="auto", phase_seconds=phases)

    found = store.get_run(run_id)
    assert found.winner == auto and found.baseline("auto") == auto
    assert found.phase_seconds == phases
    candidates = {candidate.name: candidate for candidate in store.list_candidates(run_id)}
    assert candidates["trial 1"] == failed and not failed.feasible
    assert candidates["trial 0"] == _trial(run, 0)  # not measured: left as it was
    # Predicted to fit, failed for real: the column SQL filters on says infeasible.
    assert failed.prediction is not None
    assert ("trial 1", 1, False, failed.prediction.latency_s, False) in _candidate_rows(db_url)

    # Measured again and it ran: feasible once more; no winner given keeps the winner.
    ran = dataclasses.replace(failed, measure_error="", measured_s=0.5)
    store.record_measurements(run_id, [ran], winner=None, phase_seconds=phases)
    assert store.get_run(run_id).winner == auto
    assert ("trial 1", 1, False, failed.prediction.latency_s, True) in _candidate_rows(db_url)


def test_a_measurement_of_an_unknown_candidate_records_nothing(store: Store, run: Run) -> None:
    run_id = store.create_run(run)
    store.finish_run(run_id, status=RunStatus.COMPLETE, winner=run.baselines[0], trials=0, phase_seconds={})
    before = (store.get_run(run_id), store.list_candidates(run_id))
    auto = dataclasses.replace(run.baseline("auto"), measured_s=0.25)
    with pytest.raises(ValueError, match=r"run \d+ has no candidate 'trial 9'"):
        unknown = dataclasses.replace(_trial(run, 9), measured_s=0.125)
        store.record_measurements(run_id, [auto, unknown], winner="auto", phase_seconds={})
    with pytest.raises(ValueError, match="has no candidate 'exact'"):
        store.record_measurements(run_id, [auto], winner="exact", phase_seconds={"measure": 1.0})
    assert (store.get_run(run_id), store.list_candidates(run_id)) == before
    with pytest.raises(RunNotFoundError):
        store.record_measurements(4242, [auto], winner=None, phase_seconds={})


def test_a_failed_measurement_carries_no_latency_and_is_one_line(run: Run) -> None:
    auto = run.baseline("auto")
    with pytest.raises(ValueError, match="a failed measurement has no latency"):
        dataclasses.replace(auto, measured_s=0.5, measure_error="load failed: RuntimeError")
    with pytest.raises(ValueError, match="one line"):
        dataclasses.replace(auto, measure_error="load failed:\nTraceback")
    assert auto.feasible and not dataclasses.replace(auto, measure_error="out of memory on cpu").feasible


def test_complete_makes_the_fastest_feasible_stored_candidate_the_winner(store: Store, run: Run) -> None:
    run_id = store.create_run(run)
    store.add_candidates(run_id, [_trial(run, n) for n in (2, 3)])
    auto = next(c for c in run.baselines if c.name == "auto")
    assert auto.prediction is not None and auto.prediction.feasible
    assert auto.prediction.latency_s < _trial(run, 2).prediction.latency_s  # type: ignore[union-attr]

    store.complete_run(run_id, trials=2, phase_seconds={"search": 1.0}, baselines_compete=True)
    assert store.get_run(run_id).winner == auto
    store.complete_run(run_id, trials=2, phase_seconds={"search": 1.0}, baselines_compete=False)
    assert store.get_run(run_id).winner == _trial(run, 2)

    # A second worker on the same study stored a faster trial and saw fewer trials finish.
    store.add_candidates(run_id, [_trial(run, 0)])
    store.complete_run(run_id, trials=1, phase_seconds={"search": 2.0}, baselines_compete=True)
    found = store.get_run(run_id)
    assert found.status is RunStatus.COMPLETE and found.winner == _trial(run, 0)
    assert found.trials == 3 and found.phase_seconds == {"search": 2.0}  # the three trials stored
    with pytest.raises(RunNotFoundError):
        store.complete_run(4242, trials=0, phase_seconds={}, baselines_compete=True)


def test_a_running_run_counts_the_trials_stored_so_far(store: Store, run: Run) -> None:
    run_id = store.create_run(run)
    assert store.get_run(run_id).trials == 0
    store.add_candidates(run_id, [_trial(run, n) for n in (0, 1)])
    store.add_candidates(run_id, [_trial(run, 1), _trial(run, 2)], skip_stored=True)  # another worker's
    running = store.get_run(run_id)
    assert running.status is RunStatus.RUNNING and running.trials == 3
    store.finish_run(run_id, status=RunStatus.INTERRUPTED, winner=None, trials=5, phase_seconds={})
    assert store.get_run(run_id).trials == 5  # finishing sets the count the search reached


def test_of_maps_priced_alike_the_one_on_the_lowest_gpus_wins(store: Store, run: Run) -> None:
    auto = run.baseline("auto")  # on GPU 0 and the cpu
    placements = auto.device_map.placements
    moved = DeviceMap(tuple((unit, "1" if place == "0" else place) for unit, place in placements))
    on_gpu_1 = Candidate("trial 0", moved, auto.prediction, trial=0)  # the same price on another GPU
    run_id = store.create_run(run)
    store.add_candidates(run_id, [on_gpu_1])
    store.complete_run(run_id, trials=1, phase_seconds={}, baselines_compete=True)
    assert store.get_run(run_id).winner == auto
    store.complete_run(run_id, trials=1, phase_seconds={}, baselines_compete=False)
    assert store.get_run(run_id).winner == on_gpu_1  # the only trial: the tie-break ranks, never drops
    store.add_candidates(run_id, [dataclasses.replace(auto, name="trial 1", trial=1)])
    store.complete_run(run_id, trials=2, phase_seconds={}, baselines_compete=True)
    winner = store.get_run(run_id).winner
    assert winner is not None and winner.name == "trial 1"  # a trial before a baseline


def _age_lease(url: str, run_id: int, seconds: float) -> None:
    """Move a run's last renewal `seconds` into the past, as if its process had stopped then."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            heartbeat = connection.execute(
                sqlalchemy.text("SELECT heartbeat_at FROM runs WHERE id = :id"), {"id": run_id}
            ).scalar_one()
            if isinstance(heartbeat, str):  # SQLite keeps text
                heartbeat = datetime.datetime.fromisoformat(heartbeat)
            connection.execute(
                sqlalchemy.text("UPDATE runs SET heartbeat_at = :at WHERE id = :id"),
                {"at": heartbeat - datetime.timedelta(seconds=seconds), "id": run_id},
            )
    finally:
        engine.dispose()


def test_a_running_run_whose_lease_expired_reads_as_interrupted_until_renewed(
    db_url: str, store: Store, run: Run
) -> None:
    run_id = store.create_run(run)
    _age_lease(db_url, run_id, LEASE_SECONDS - 5)
    assert store.get_run(run_id).status is RunStatus.RUNNING  # renewed within the lease
    assert store.find_run(run.key, status=RunStatus.RUNNING) is not None

    _age_lease(db_url, run_id, 10)  # now past it: its process is gone
    assert store.get_run(run_id).status is RunStatus.INTERRUPTED
    assert [found.status for found in store.list_runs()] == [RunStatus.INTERRUPTED]
    assert store.find_run(run.key, status=RunStatus.RUNNING) is None
    interrupted = store.find_run(run.key, status=RunStatus.INTERRUPTED)
    assert interrupted is not None and interrupted.id == run_id
    unfinished = store.find_unfinished_run(run.key)
    assert unfinished is not None and unfinished.id == run_id

    store.renew_lease(run_id)
    assert store.get_run(run_id).status is RunStatus.RUNNING


def test_an_unfinished_run_answers_the_fastest_feasible_map_stored_so_far(
    db_url: str, store: Store, run: Run
) -> None:
    """The winner is stored when the search ends; a running run, and one whose workers died,
    answer the best map stored so far (the exact optimum and accelerate's maps included), where
    they answered none."""
    run_id = store.create_run(run)
    trials = [_trial(run, n) for n in range(3)]
    store.add_candidates(run_id, trials)
    feasible = [c for c in [*run.baselines, *trials] if c.feasible and c.prediction is not None]
    best = min(feasible, key=lambda c: c.prediction.latency_s)  # type: ignore[union-attr]
    assert store.get_run(run_id).winner == best
    _age_lease(db_url, run_id, LEASE_SECONDS + 5)
    interrupted = store.get_run(run_id)
    assert interrupted.status is RunStatus.INTERRUPTED and interrupted.winner == best

    # cancelled, it keeps that map: its workers died before they could store a winner
    cancelled = store.cancel_run(run_id)
    assert cancelled.status is RunStatus.FAILED and cancelled.winner == best
    assert store.get_run(run_id).winner == best

    queued = store.create_run(_queued(run, 2))
    assert store.get_run(queued).winner is None
    assert store.cancel_run(queued).winner is None


def test_claiming_a_run_restarts_its_lease_and_tells_whether_it_was_abandoned(
    db_url: str, store: Store, run: Run
) -> None:
    run_id = store.create_run(run)
    claimed, abandoned = store.claim_run(run_id)
    assert claimed.status is RunStatus.RUNNING and not abandoned  # its creator is alive

    store.finish_run(run_id, status=RunStatus.INTERRUPTED, winner=None, trials=3, phase_seconds={})
    _age_lease(db_url, run_id, LEASE_SECONDS + 5)
    claimed, abandoned = store.claim_run(run_id)
    assert abandoned and claimed.status is RunStatus.RUNNING and claimed.trials == 3
    assert store.get_run(run_id).status is RunStatus.RUNNING


def test_a_worker_interrupted_after_another_completed_the_run_leaves_it_complete(
    store: Store, run: Run
) -> None:
    run_id = store.create_run(run)
    store.add_candidates(run_id, [_trial(run, 0), _trial(run, 1)])
    store.complete_run(run_id, trials=2, phase_seconds={"search": 1.0}, baselines_compete=False)
    store.finish_run(
        run_id, status=RunStatus.INTERRUPTED, winner=_trial(run, 0), trials=1, phase_seconds={"search": 0.5}
    )
    store.renew_lease(run_id)  # a late renewal does not revive it either
    found = store.get_run(run_id)
    assert found.status is RunStatus.COMPLETE and found.trials == 2 and found.winner == _trial(run, 0)
    assert found.phase_seconds == {"search": 1.0}


def test_a_run_without_a_lease_reads_as_interrupted(db_url: str, store: Store, run: Run) -> None:
    """Runs stored before leases existed (revision 0005) have none: their processes are gone."""
    run_id = store.create_run(run)
    engine = sqlalchemy.create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("UPDATE runs SET heartbeat_at = NULL"))
    engine.dispose()
    assert store.get_run(run_id).status is RunStatus.INTERRUPTED


def test_candidates_already_stored_are_skipped_when_asked(store: Store, run: Run) -> None:
    run_id = store.create_run(run)
    store.add_candidates(run_id, [_trial(run, 0), _trial(run, 1)])
    # Another worker stored trial 1 already; trial 2 is new.
    store.add_candidates(run_id, [_trial(run, 1), _trial(run, 2)], skip_stored=True)
    trials = [c for c in store.list_candidates(run_id) if c.trial is not None]
    assert trials == [_trial(run, n) for n in range(3)]
    with pytest.raises(StorageError, match="(UNIQUE|unique)"):
        store.add_candidates(run_id, [_trial(run, 2)])


def test_runs_are_filtered_by_status_as_the_leases_make_it_and_paged(
    db_url: str, store: Store, run: Run
) -> None:
    alive, dead, stopped, done = (
        store.create_run(_copy(run, number, created_at=f"2025-11-2{number}T00:00:00+00:00"))
        for number in range(4)
    )
    _age_lease(db_url, dead, LEASE_SECONDS + 5)
    store.finish_run(stopped, status=RunStatus.INTERRUPTED, winner=None, trials=1, phase_seconds={})
    store.complete_run(done, trials=0, phase_seconds={}, baselines_compete=True)

    def listed(**filters: object) -> list[int]:
        return [found.id for found in store.list_runs(**filters)]  # type: ignore[arg-type]

    assert listed(status=RunStatus.RUNNING) == [alive]
    assert listed(status=RunStatus.INTERRUPTED) == [stopped, dead]
    assert listed(status=RunStatus.COMPLETE) == [done]
    assert listed(status=RunStatus.FAILED) == []
    assert listed(limit=2) == [done, stopped] and listed(limit=2, offset=2) == [dead, alive]
    assert listed(offset=4) == []
    with pytest.raises(ValueError, match="offset must be at least 0"):
        store.list_runs(offset=-1)


def test_a_tuned_run_is_found_by_the_names_workload_and_limits_it_was_tuned_for(
    store: Store, run: Run
) -> None:
    def tuned(number: int, **changes: object) -> int:
        plain = {"pins": (), "exclude": (), **changes}
        run_id = store.create_run(_copy(run, number, **plain))
        store.complete_run(run_id, trials=0, phase_seconds={}, baselines_compete=True)
        return run_id

    plain = tuned(0, max_memory={})
    newer = tuned(1, max_memory={}, created_at="2099-01-01T00:00:00+00:00")
    capped = tuned(2, max_memory={"0": 2**30})
    tuned(3, max_memory={}, pins=(("lm_head", "cpu"),), created_at="2100-01-01T00:00:00+00:00")
    workload = run.workload
    request = {
        "model": run.model_name,
        "hardware": run.hardware_name,
        "batch": workload.batch,
        "seq": workload.seq,
        "new_tokens": workload.new_tokens,
        "dtype": workload.dtype,
        "max_memory": {},
    }

    def found(**changes: object) -> int | None:
        answer = store.find_tuned_run(**{**request, **changes})  # type: ignore[arg-type]
        return None if answer is None else answer.id

    assert plain != newer and found() == newer  # the newest; the pinned run never answers
    assert found(new_tokens=None, dtype=None) == newer
    assert found(max_memory={"0": 2**30}) == capped
    assert found(max_memory={"0": 2**31}) is None
    assert found(seq=workload.seq + 1) is None and found(dtype="bfloat16") is None
    assert found(model=run.model_name.upper()) is None  # names as tuned, exactly


def _queued(run: Run, number: int) -> Run:
    """A request of the queue as `queue_run` stores it: nothing prepared yet."""
    return _copy(
        run,
        number,
        key="",
        model_fingerprint="",
        hardware_fingerprint="",
        baselines=(),
        status=RunStatus.QUEUED,
        requested_trials=40,
    )


def test_queued_runs_are_claimed_oldest_first_each_by_one_worker(db_url: str, store: Store, run: Run) -> None:
    first, second = store.create_run(_queued(run, 1)), store.create_run(_queued(run, 2))
    store.create_run(run)  # a run of optimize: never the queue's
    assert [found.id for found in store.list_runs(status=RunStatus.QUEUED)] == [second, first]

    claims = [store.claim_queued_run(), store.claim_queued_run(), store.claim_queued_run()]
    assert [(c[0].id, c[0].status, c[1]) for c in claims if c is not None] == [
        (first, RunStatus.RUNNING, False),
        (second, RunStatus.RUNNING, False),
    ]
    assert claims[2] is None


def test_a_run_of_the_queue_whose_worker_died_or_stopped_is_claimed_again(
    db_url: str, store: Store, run: Run
) -> None:
    dead, stopped, long_stopped = (store.create_run(_queued(run, number)) for number in (1, 2, 3))
    store.claim_queued_run(), store.claim_queued_run(), store.claim_queued_run()
    assert store.claim_queued_run() is None  # all workers alive
    for run_id in (stopped, long_stopped):
        store.finish_run(run_id, status=RunStatus.INTERRUPTED, winner=None, trials=5, phase_seconds={})
    _age_lease(db_url, dead, LEASE_SECONDS + 5)
    _age_lease(db_url, long_stopped, LEASE_SECONDS + 5)
    interrupted = store.create_run(run)  # a run of optimize, interrupted: its own command resumes it
    store.finish_run(interrupted, status=RunStatus.INTERRUPTED, winner=None, trials=1, phase_seconds={})

    again = [store.claim_queued_run() for _ in range(4)]
    # Abandoned: no worker renewed the lease for LEASE_SECONDS, whatever they left running is dead.
    # A run stopped by one worker a moment ago may still be searched by another that joined it.
    assert [(c[0].id, c[1]) for c in again if c is not None] == [
        (dead, True),
        (stopped, False),
        (long_stopped, True),
    ]
    assert again[3] is None and store.get_run(stopped).trials == 5


def test_the_seconds_left_to_a_queued_search_count_down_from_its_whole_limit(store: Store, run: Run) -> None:
    """By the database's clock to the millisecond or finer: SQLite's CURRENT_TIMESTAMP keeps whole
    seconds, which cut up to one from a limit (a 1 s limit could leave the search no trial)."""
    queued = store.get_run(store.create_run(dataclasses.replace(_queued(run, 1), requested_timeout_s=60.0)))
    store.adopt_run(dataclasses.replace(run, id=queued.id, study_name=queued.study_name, requested_trials=40))
    left = []
    for _ in range(5):
        left.append(store.search_seconds_left(queued.id))
        time.sleep(0.25)
    assert all(seconds is not None and 50 < seconds <= 60 for seconds in left), left
    assert all(later < earlier for earlier, later in itertools.pairwise(left)), left  # type: ignore[operator]


def test_a_queued_run_is_filled_in_by_its_worker_or_failed_with_why(store: Store, run: Run) -> None:
    queued = store.get_run(store.create_run(_queued(run, 1)))
    assert (queued.status, queued.key, queued.baselines, queued.requested_trials) == (
        RunStatus.QUEUED,
        "",
        (),
        40,
    )
    assert queued.inputs == "text"  # nothing is known of the model until a worker prepares it
    prepared = dataclasses.replace(run, id=queued.id, study_name=queued.study_name, requested_trials=40)
    store.adopt_run(dataclasses.replace(prepared, inputs="speech"))
    adopted = store.get_run(queued.id)
    assert adopted.key == run.key and adopted.model_fingerprint == run.model_fingerprint
    assert adopted.inputs == "speech"
    assert adopted.baselines == run.baselines and adopted.status is RunStatus.RUNNING
    assert adopted.study_name == queued.study_name and adopted.requested_trials == 40

    other = store.create_run(_queued(run, 2))
    store.fail_run(other, "no such model folder: /models/x\nsecond line")
    failed = store.get_run(other)
    assert failed.status is RunStatus.FAILED and failed.error == "no such model folder: /models/x second line"
    assert store.claim_queued_run() is None  # a failed run stays failed
