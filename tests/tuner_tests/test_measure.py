"""`tuner optimize --measure K`: the best maps loaded and timed for real, the measured winner stored.

A tiny real Llama with safetensors weights, a cpu cap that sends half of it to disk, and a few
trials: each optimize takes seconds on a two-core machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from reports.terminal import format_seconds
from storage import Store
from tests.tuner_tests.conftest import Recorder
from tests.tuner_tests.conftest import run
from tests.tuner_tests.conftest import tuned
from tuner.core.domain import Candidate
from tuner.core.domain import DeviceMap
from tuner.core.domain import PhaseCost
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.exceptions import ConstraintError
from tuner.core.exceptions import RunInterrupted
from tuner.core.sizes import format_bytes

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


pytestmark = pytest.mark.usefixtures("one_thread")


def cpu_cap(folder: Path) -> str:
    """The cpu may hold half the weights, so the rest must go to disk (as --max-memory)."""
    return f"cpu={half_the_weights(folder)}"


def half_the_weights(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) // 2


def settings(folder: Path) -> dict[str, object]:
    """`optimize` keyword arguments for a small generate workload and a short search."""
    return dict(
        seq=8, new_tokens=2, repeats=1, trials=6, random_seed=1, max_memory={"cpu": half_the_weights(folder)}
    )


def cli_args(folder: Path, db: str, *extra: str) -> list[str]:
    """`settings` on the command line."""
    return [
        "optimize", str(folder), "--seq", "8", "--new-tokens", "2", "--repeats", "1", "--trials", "6",
        "--seed", "1", "--db", db, *extra,
    ]  # fmt: skip


def predicted(candidate: Candidate) -> float:
    return candidate.prediction.latency_s if candidate.prediction is not None else math.inf


def with_fastest_map_on(store: Store, device: str) -> Run:
    """The stored run, its search given ``trial 99``: every unit on `device`, priced as fitting and
    as the fastest map of all, so that it is among the best two measured."""
    stored = store.latest_run()
    assert stored is not None and stored.winner is not None and stored.winner.prediction is not None
    instant = dataclasses.replace(
        stored.winner.prediction, prefill=PhaseCost(0.0, 0.0, 0.0), decode=PhaseCost(0.0, 0.0, 0.0)
    )
    whole = DeviceMap(tuple((unit, device) for unit, _ in stored.winner.device_map.placements))
    store.add_candidates(stored.id, [Candidate("trial 99", whole, instant, trial=99)])
    return stored


@pytest.fixture(scope="module")
def modelled_db(
    weights_folder: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
    store_this_machine: Callable[[str], str],
) -> Path:
    """A database holding one complete run of the tiny Llama, never measured."""
    db_file = tmp_path_factory.mktemp("modelled") / "tuner.db"
    store_this_machine(f"sqlite:///{db_file}")
    folder = weights_folder("llama")
    outcome = tuned(folder, f"sqlite:///{db_file}", **settings(folder))
    assert outcome.run.status is RunStatus.COMPLETE and not outcome.run.measured
    return db_file


@pytest.fixture
def db(modelled_db: Path, tmp_path: Path) -> str:
    """A copy of `modelled_db` of the test's own."""
    (tmp_path / "tuner.db").write_bytes(modelled_db.read_bytes())
    return f"sqlite:///{tmp_path / 'tuner.db'}"


def test_measure_stores_the_fastest_measured_map_and_export_gives_it(
    weights_folder: Callable[[str], Path],
    measured_db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = weights_folder("llama")
    db = measured_db_url
    args = cli_args(folder, db, "--max-memory", cpu_cap(folder), "--measure", "2", "--measure-rounds", "2")
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    document = json.loads(out)
    assert document["reused"] is False and document["status"] == "complete"
    assert document["phase_seconds"]["measure"] > 0

    with Store(db) as store:
        found = store.get_run(document["id"])
        candidates = store.list_candidates(found.id)
    measured = {c.name: c for c in candidates if c.measured_s is not None or c.measure_error}
    assert {c["name"] for c in document["measured"]} == set(measured)
    # Every accelerate strategy ran, and so did the two fastest distinct maps by the model.
    assert all(measured[name].measured_s for name in STRATEGIES), [measured.get(n) for n in STRATEGIES]
    fitting = sorted((c for c in candidates if c.prediction and c.prediction.feasible), key=predicted)
    for dmap in list(dict.fromkeys(c.device_map for c in fitting))[:2]:
        assert any(c.device_map == dmap and c.measured_s for c in measured.values())
    # The winner is the fastest measured map among those predicted to fit the cpu cap.
    ran = [c.measured_s for c in measured.values() if c.measured_s is not None and c.feasible]
    assert found.winner is not None and found.winner.measured_s == min(ran)
    assert found.winner.feasible and "disk" in found.winner.device_map.devices

    exported = tmp_path / "map.json"
    assert run(["export", "latest", "-o", str(exported), "--db", db], capsys)[0] == 0
    assert json.loads(exported.read_text()) == found.winner.device_map.to_hf()

    shown = json.loads(run(["show", "latest", "--json", "--db", db], capsys)[1])
    assert shown == {k: v for k, v in document.items() if k not in ("reused", "searched")}
    code, out, _ = run(["show", "latest", "--db", db], capsys)
    assert code == 0 and "measured" in out and "fastest map measured for real" in out
    code, out, _ = run(["history", "--db", db], capsys)
    assert code == 0 and format_seconds(found.winner.measured_s) in out

    # Measured already: the same command answers from the database and measures nothing again.
    again = json.loads(run([*args, "--json"], capsys)[1])
    assert again["reused"] is True and again["phase_seconds"] == document["phase_seconds"]


def test_a_stored_run_is_measured_and_a_map_that_cannot_load_is_infeasible_with_its_reason(
    weights_folder: Callable[[str], Path], db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A map naming GPU 0 fails in from_pretrained on this cpu-only machine: stored, not raised."""
    if torch.cuda.is_available():
        pytest.skip("a GPU map loads on this machine")
    folder = weights_folder("llama")
    with Store(db) as store:
        stored = with_fastest_map_on(store, "0")
        before = len(store.list_candidates(stored.id))
        trials = store.get_run(stored.id).trials  # the stored trials, the added one counted

        given = settings(folder)
        outcome = tuned(folder, db, measure=2, measure_rounds=1, **given)

        assert outcome.reused and outcome.run.id == stored.id and outcome.run.measured
        assert outcome.run.trials == trials == stored.trials + 1
        candidates = {c.name: c for c in store.list_candidates(stored.id)}
        assert len(candidates) == before  # measured, not searched again
        failed = candidates["trial 99"]
        assert failed.measure_error.startswith("load failed: RuntimeError")
        assert failed.measured_s is None and not failed.feasible
        winner = outcome.run.winner
        assert winner is not None and winner.name != "trial 99" and winner.measured_s is not None
    with sqlite3.connect(db.removeprefix("sqlite:///")) as connection:
        statement = "select feasible, measure_error from candidates where name = 'trial 99'"
        assert connection.execute(statement).fetchone() == (0, failed.measure_error)

    # `show` and the report tell why the map is out of the running.
    code, out, _ = run(["show", "latest", "--db", db], capsys)
    assert code == 0 and "Cannot access accelerator device" in out
    assert run(["report", "latest", "-o", str(tmp_path / "report.html"), "--db", db], capsys)[0] == 0
    page = (tmp_path / "report.html").read_text()
    assert '<tr class="candidate measure-failed" data-candidate="trial 99">' in page


def test_a_map_whose_measured_peak_goes_over_a_limit_is_no_winner_however_fast(
    weights_folder: Callable[[str], Path], db: str
) -> None:
    """A map priced as the fastest of all and as fitting, which holds every weight in RAM: it
    runs, but its measured cpu peak is over the cap of half the weights."""
    folder = weights_folder("llama")
    with Store(db) as store:
        stored = with_fastest_map_on(store, "cpu")
        outcome = tuned(folder, db, measure=2, measure_rounds=1, **settings(folder))

        over = {c.name: c for c in store.list_candidates(stored.id)}["trial 99"]
    cap = format_bytes(half_the_weights(folder))
    assert over.measure_error.startswith("its measured peak memory went over the limit (cpu: ")
    assert over.measure_error.endswith(f" of {cap})") and over.measured_s is None and not over.feasible
    winner = outcome.run.winner
    assert winner is not None and winner.name != "trial 99" and winner.measured_s is not None


def test_measuring_a_stored_run_says_its_maps_were_measured_now(
    weights_folder: Callable[[str], Path], db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = weights_folder("llama")
    args = cli_args(folder, db, "--max-memory", cpu_cap(folder))
    assert run(args, capsys)[0] == 0
    code, out, err = run([*args, "--measure", "1", "--measure-rounds", "1"], capsys)
    assert code == 0, err
    measured = json.loads(run(["show", "latest", "--json", "--db", db], capsys)[1])["measured"]
    distinct = {json.dumps(candidate["hf_device_map"], sort_keys=True) for candidate in measured}
    export = "export it with: tuner export 1 -o map.json"  # by its id: `latest` is the run created last
    assert out.rstrip().endswith(f"from the database, {len(distinct)} of its maps measured now; {export}")
    code, out, err = run([*args, "--measure", "2", "--measure-rounds", "1"], capsys)  # measured: not again
    assert code == 0 and "run 1 from the database (--force searches again)" in out
    assert "run 1 answers with the maps it measured before, not 2 measured now; --force searches" in err


class _StopWhenMeasuring(Recorder):
    """Ctrl-C as the measurement starts."""

    def measuring(self, maps: int, rounds: int) -> None:
        raise KeyboardInterrupt


def test_an_interrupt_while_measuring_leaves_the_run_complete_with_its_modelled_winner(
    weights_folder: Callable[[str], Path], db: str
) -> None:
    folder = weights_folder("llama")
    with Store(db) as store:
        stored = store.latest_run()
        assert stored is not None
        given = settings(folder)
        with pytest.raises(RunInterrupted) as stopped:
            tuned(folder, db, _StopWhenMeasuring(), measure=1, **given)
        assert stopped.value.run_id == stored.id and stopped.value.measuring
        assert store.latest_run() == stored
        assert not any(c.measured_s or c.measure_error for c in store.list_candidates(stored.id))


def test_measure_needs_this_machine_and_weights(
    weights_folder: Callable[[str], Path],
    config_folder: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db_file = tmp_path / "tuner.db"
    db = f"sqlite:///{db_file}"
    spec = ["--measure", "1", "--hardware", "1xA10G-24GB"]
    folder = weights_folder("llama")
    capsys.readouterr()  # the folder's saving progress, when this test made it, is not the command's
    code, _, err = run(cli_args(folder, db, *spec), capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert "measuring loads each map on this machine" in err and "hardware 1xA10G-24GB" in err

    code, _, err = run(cli_args(config_folder("llama"), db, "--measure", "1"), capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert "holds no weights" in err and "measuring" in err
    assert not db_file.exists()  # refused before the database was even opened

    with pytest.raises(ConstraintError, match="measure must be a whole number of at least 0"):
        tuned(weights_folder("llama"), db, measure=-1)
