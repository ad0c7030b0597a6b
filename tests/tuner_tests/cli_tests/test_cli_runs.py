"""optimize, export, history and show as users meet them, on tiny real models on this machine."""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from accelerate.utils import check_device_map
from accelerate.utils import find_tied_parameters

import tuner
from storage import Store
from tests.conftest import model_class
from tests.tuner_tests.conftest import Notes
from tests.tuner_tests.conftest import Recorder
from tests.tuner_tests.conftest import run
from tests.tuner_tests.conftest import tuned
from tuner.cli import main
from tuner.core.domain import Candidate
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.exceptions import RunInterrupted
from tuner.core.sizes import format_bytes


def run_count(db_file: Path) -> int:
    with sqlite3.connect(db_file) as connection:
        return int(connection.execute("select count(*) from runs").fetchone()[0])


def model_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def optimize_args(folder: Path, db: str, *extra: str) -> list[str]:
    # the cpu may hold half the weights: the rest must go to disk
    cap = model_bytes(folder) // 2
    return [
        "optimize", str(folder), "--seq", "8", "--new-tokens", "2", "--repeats", "1", "--trials", "12",
        "--seed", "1", "--max-memory", f"cpu={cap}", "--db", db, *extra,
    ]  # fmt: skip


@pytest.fixture
def db(measured_db_url: str) -> str:
    return measured_db_url


def test_optimize_stores_a_winner_no_worse_than_accelerate_and_exact(
    weights_folder: Callable[[str], Path], db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([*optimize_args(weights_folder("llama"), db), "--json"], capsys)
    assert code == 0, err
    stored = json.loads(out)
    assert stored["reused"] is False and stored["status"] == "complete" and stored["trials"] == 12
    assert {b["name"] for b in stored["baselines"]} >= {
        "auto",
        "balanced",
        "balanced_low_0",
        "sequential",
        "exact",
    }
    with Store(db) as store:
        found = store.get_run(stored["id"])
        assert found.winner is not None and found.winner.prediction is not None
        for baseline in found.baselines:
            assert baseline.prediction is not None
            if baseline.prediction.feasible:
                assert found.winner.prediction.latency_s <= baseline.prediction.latency_s * (1 + 1e-9)
        assert len(store.list_candidates(found.id)) == len(found.baselines) + 12
    # what the table shows, for scripts: each map's latency, whether it answers, the map to load
    winner = stored["winner"]
    assert winner["feasible"] is True and winner["hf_device_map"] == found.winner.device_map.to_hf()
    assert winner["latency_s"] == found.winner.prediction.latency_s
    for baseline, shown in zip(found.baselines, stored["baselines"], strict=True):
        assert shown["feasible"] is baseline.feasible
        if shown["feasible"]:
            assert winner["latency_s"] <= shown["latency_s"] * (1 + 1e-9)

    code, out, _ = run([*optimize_args(weights_folder("llama"), db), "--json"], capsys)
    again = json.loads(out)
    assert again["reused"] is True and again["id"] == stored["id"]


@pytest.mark.parametrize("family_name", ["llama", "gpt2", "t5", "bert"])
def test_exported_map_loads_and_matches_the_unsplit_model(
    family_name: str,
    weights_folder: Callable[[str], Path],
    tmp_path: Path,
    db: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = weights_folder(family_name)
    new_tokens = "0" if family_name == "bert" else "2"
    args = optimize_args(folder, db)
    args[args.index("--new-tokens") + 1] = new_tokens
    assert run(args, capsys)[0] == 0
    target = tmp_path / "map.json"
    code, _, err = run(["export", "latest", "-o", str(target), "--db", db], capsys)
    assert code == 0 and f"({folder}): map of" in err, err  # whose map `latest` was
    device_map = json.loads(target.read_text())

    config = transformers.AutoConfig.from_pretrained(folder)
    reference = model_class(config).from_pretrained(folder).eval()
    check_device_map(reference, device_map)  # raises if a weight is not covered
    for group in find_tied_parameters(reference):
        owners = {
            device_map[max((u for u in device_map if p == u or p.startswith(u + ".")), key=len)]
            for p in group
        }
        assert len(owners) == 1, group
    split = model_class(config).from_pretrained(
        folder, device_map=device_map, offload_folder=tmp_path / "off"
    )
    ids = torch.arange(10).reshape(1, 10) % 100
    inputs = {"input_ids": ids}
    if config.is_encoder_decoder:
        inputs["decoder_input_ids"] = ids[:, :4]
    with torch.no_grad():
        assert torch.allclose(reference(**inputs).logits, split.eval()(**inputs).logits, atol=1e-5)


def test_history_and_show_round_trip(
    weights_folder: Callable[[str], Path], db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first = json.loads(run([*optimize_args(weights_folder("llama"), db), "--json"], capsys)[1])
    second = json.loads(run([*optimize_args(weights_folder("gpt2"), db), "--json"], capsys)[1])
    listed = json.loads(run(["history", "--json", "--db", db], capsys)[1])
    assert [r["id"] for r in listed] == [second["id"], first["id"]]
    only = json.loads(run(["history", "--model", "llama", "--json", "--db", db], capsys)[1])
    assert [r["id"] for r in only] == [first["id"]]
    shown = json.loads(run(["show", str(first["id"]), "--json", "--db", db], capsys)[1])
    assert shown == {k: v for k, v in first.items() if k not in ("reused", "searched")}
    code, out, _ = run(["history", "--db", db], capsys)
    assert code == 0 and "complete" in out
    code, out, err = run(["history", "--model", "mistral", "--hardware", "H100", "--db", db], capsys)
    assert (code, out, err) == (0, "", "no run matches --model mistral --hardware H100\n")
    complete = json.loads(run(["history", "--status", "complete", "--json", "--db", db], capsys)[1])
    assert [r["id"] for r in complete] == [second["id"], first["id"]]
    code, out, err = run(["history", "--status", "failed", "--db", db], capsys)
    assert (code, out, err) == (0, "", "no run matches --status failed\n")
    exported = json.loads(run(["export", str(first["id"]), "--with-max-memory", "--db", db], capsys)[1])
    assert set(exported) == {"device_map", "max_memory", "dtype"} and "cpu" in exported["max_memory"]
    assert exported["dtype"] == first["workload"]["dtype"]
    # -o - is stdout, as Unix tools take it, never a file named '-'
    dashed = run(["export", str(first["id"]), "--with-max-memory", "-o", "-", "--db", db], capsys)
    assert dashed[0] == 0 and json.loads(dashed[1]) == exported
    code, out, _ = run(["report", str(first["id"]), "-o", "-", "--db", db], capsys)
    assert code == 0 and out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")
    assert not Path("-").exists()


BAD = {
    "unknown run": (["show", "999"], "999"),
    "not a run id": (["export", "abc"], "not a run id"),
    "unknown unit in pin": (["--pin", "model.layer.2=cpu"], "did you mean model.layers.2"),
    "pin contradicts exclude": (["--pin", "lm_head=disk", "--exclude", "disk"], "disk is excluded"),
    "unit pinned twice": (
        ["--pin", "lm_head=cpu", "--pin", "lm_head=disk"],
        "--pin: lm_head is pinned twice",
    ),
    "resume of no run": (["--resume", "9"], "9"),
    "limit on an absent device": (["--max-memory", "3=1GiB"], "device 3"),
    "ambiguous bytes": (["--max-memory", "cpu=8gb"], "ambiguous"),
    "nothing fits": (["--max-memory", "cpu=1KiB", "--exclude", "disk"], "needs"),
}


@pytest.fixture(scope="module")
def one_run_db(
    weights_folder: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
    store_this_machine: Callable[[str], str],
) -> Path:
    """A database holding one complete run of the tiny Llama."""
    db_file = tmp_path_factory.mktemp("one-run") / "tuner.db"
    store_this_machine(f"sqlite:///{db_file}")
    with pytest.raises(SystemExit) as done:
        main(optimize_args(weights_folder("llama"), f"sqlite:///{db_file}"))
    assert done.value.code == 0
    return db_file


def copy_of(db_file: Path, folder: Path) -> str:
    """The URL of a copy of `db_file` in `folder`, as ``tuner.db``: a test's own to change."""
    (folder / "tuner.db").write_bytes(db_file.read_bytes())
    return f"sqlite:///{folder / 'tuner.db'}"


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_writes_no_run(
    case: str,
    weights_folder: Callable[[str], Path],
    one_run_db: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = weights_folder("llama")
    db = copy_of(one_run_db, tmp_path)
    extra, message = BAD[case]
    args = (
        [*extra, "--db", db]
        if extra[0] in {"show", "export"}
        else [*optimize_args(folder, db), *extra]  # other arguments than the stored run's: not reused
    )
    code, out, err = run(args, capsys)
    assert code != 0
    # a busy machine adds a note on what was measured meanwhile; the error itself is one line
    errors = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert len(errors) == 1, err
    assert message in errors[0]
    assert run_count(tmp_path / "tuner.db") == 1


@pytest.mark.parametrize(
    "command",
    [["history"], ["history", "--json"], ["show", "1"], ["export", "latest"], ["report", "1"]],
)
def test_a_read_of_a_database_that_is_not_there_says_so_and_creates_nothing(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mistyped = tmp_path / "no-such-folder" / "tuner.db"
    code, out, err = run([*command, "--db", f"sqlite:///{mistyped}"], capsys)
    hint = "nothing is stored there yet (optimize stores runs); check --db or TUNER_DB"
    message = f"no database at {mistyped}: {hint}"
    assert code != 0 and err.strip() == f"error: {message}"
    assert (json.loads(out) == {"error": message}) if "--json" in command else not out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["history"], ["show", "1"], ["export", "latest"]])
def test_a_read_of_an_empty_file_says_so_and_leaves_it_empty(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    touched = tmp_path / "tuner.db"
    touched.touch()
    code, out, err = run([*command, "--db", f"sqlite:///{touched}"], capsys)
    hint = "nothing is stored there yet (optimize stores runs); check --db or TUNER_DB"
    assert code != 0 and not out and err.strip() == f"error: {touched} is an empty file: {hint}"
    assert touched.stat().st_size == 0


class _StopAfter(Recorder):
    """A listener that presses Ctrl-C after `trials` trials, as a user would."""

    def __init__(self, trials: int) -> None:
        self.left = trials

    def trial_done(self, candidate: Candidate) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


def test_interrupt_keeps_trials_and_resume_finishes(weights_folder: Callable[[str], Path], db: str) -> None:
    folder = weights_folder("llama")
    settings = dict(seq=8, new_tokens=2, repeats=1, trials=10, max_memory={"cpu": model_bytes(folder) // 2})
    with pytest.raises(RunInterrupted) as stopped:
        tuned(folder, db, _StopAfter(4), random_seed=3, **settings)
    with Store(db) as store:
        interrupted = store.latest_run()
        assert interrupted is not None and interrupted.status is RunStatus.INTERRUPTED
        assert stopped.value.run_id == interrupted.id and stopped.value.trials == interrupted.trials
        kept = len(store.list_candidates(interrupted.id)) - len(interrupted.baselines)
        assert kept >= 3
    outcome = tuned(folder, db, resume=interrupted.id, random_seed=3, **settings)
    assert outcome.run.id == interrupted.id
    assert outcome.run.status is RunStatus.COMPLETE
    assert outcome.run.trials == 10
    assert outcome.run.winner is not None


class _BreakTheDatabaseThenStop(Notes):
    """Ctrl-C after `trials` trials, just as the database stops answering: what it says is
    written over the SQLite file, as a failing disk or another program might."""

    def __init__(self, trials: int, db_file: Path) -> None:
        super().__init__()
        self.left, self.db_file = trials, db_file

    def trial_done(self, candidate: Candidate) -> None:
        self.left -= 1
        if self.left == 0:
            with self.db_file.open("r+b") as file:
                file.write(b"not a database " * 1000)
            raise KeyboardInterrupt


def test_an_interrupt_that_cannot_be_stored_is_still_the_interrupt_and_says_why(
    config_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    db_file = tmp_path / "tuner.db"
    listener = _BreakTheDatabaseThenStop(3, db_file)
    asked = dict(hardware="1xT4-16GB", seq=8, new_tokens=2, trials=20, random_seed=3)
    with pytest.raises(RunInterrupted) as stopped:  # not the StorageError of marking it
        tuned(config_folder("llama"), f"sqlite:///{db_file}", listener, **asked)
    assert stopped.value.run_id == 1 and stopped.value.trials >= 3
    assert any(
        note.startswith("run 1 could not be marked interrupted now (database ")
        and "file is not a database" in note
        and note.endswith(
            "it shows as interrupted once its lease runs out (30 s), with the trials its study kept"
        )
        for note in listener.notes
    ), listener.notes


def test_resume_alone_continues_the_run_as_it_was_asked_for(
    config_folder: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    asked = dict(hardware="1xT4-16GB", seq=8, new_tokens=2, trials=10, max_memory={"0": "1GiB"})
    with pytest.raises(RunInterrupted) as stopped:
        tuned(config_folder("llama"), db, _StopAfter(4), pins={"lm_head": "0"}, random_seed=3, **asked)
    run_id = stopped.value.run_id
    # the search's budget is the command's, as the run does not keep the one it was asked for
    resume = ["optimize", "--resume", str(run_id), "--trials", "10"]
    code, out, err = run([*resume, "--json", "--db", db], capsys)
    assert code == 0, err
    resumed = json.loads(out)
    assert (resumed["id"], resumed["status"], resumed["trials"]) == (run_id, "complete", 10)
    # the 4 it ran, and the seeds it had queued in its study and not run yet
    said = re.search(rf"run {run_id} continues: (\d+) of its 10 trials done or under way", err)
    assert said is not None and int(said.group(1)) >= 4, err
    code, out, _ = run([*resume, "--db", db], capsys)  # the dtype is the run's, not one asked for
    assert code == 0 and f"dtype float32 (as run {run_id} was tuned)" in out
    # 'latest' names it too, and the Python API takes the run's settings as the command does
    code, out, err = run(["optimize", "--resume", "latest", "--json", "--db", db], capsys)
    assert code == 0 and json.loads(out)["id"] == run_id, err
    assert tuner.optimize(config_folder("llama"), resume=run_id, db=db).id == run_id
    # a setting given wins over the run's, and then it is another request
    code, _, err = run(["optimize", "--resume", str(run_id), "--seq", "9", "--db", db], capsys)
    assert code != 0 and "workload batch 1, seq 8" in err and "(now batch 1, seq 9" in err
    code, _, err = run(["optimize", "--db", db], capsys)
    assert code != 0 and "Missing argument 'MODEL' (or --resume RUN, which names it)" in err


def test_resuming_a_run_that_holds_the_trials_asked_for_says_none_is_searched(
    config_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    asked = dict(hardware="1xT4-16GB", seq=8, new_tokens=2, max_memory={"0": "1GiB"})
    with pytest.raises(RunInterrupted) as stopped:
        tuned(config_folder("llama"), db, _StopAfter(4), trials=10, random_seed=3, **asked)
    notes = Notes()
    resumed = tuner.optimize(config_folder("llama"), resume="latest", trials=2, db=db, listener=notes)
    assert resumed.id == stopped.value.run_id and resumed.status is RunStatus.COMPLETE
    assert resumed.trials >= 4 and resumed.hardware_name == "1xT4-16GB"  # the run's settings, not restated
    told = (
        rf"run {resumed.id} continues: it holds (\d+) trials, done or under way, and 2 are asked for: "
        r"none is searched \(a larger trials budget searches on\)"
    )
    held = [int(found.group(1)) for found in (re.fullmatch(told, note) for note in notes.notes) if found]
    assert held and held[0] >= 4, notes.notes


def test_validate_a_run_stores_the_measurement(
    weights_folder: Callable[[str], Path],
    one_run_db: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = copy_of(one_run_db, tmp_path)
    folder = weights_folder("llama")
    # MODEL left out: the folder the run was tuned for
    code, out, err = run(["validate", "latest", "--repeats", "1", "--json", "--db", db], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["ok"] is True and result["tokens_equal"] is True
    assert result["latency_s"] > 0 and result["predicted_s"] > 0
    shown = json.loads(run(["show", "latest", "--json", "--db", db], capsys)[1])
    assert shown["winner"]["measured_s"] == result["latency_s"] and result["run_id"] == shown["id"]
    # the peaks beside the run's own predicted ones, per device key
    predicted = {memory["device"]: memory for memory in shown["winner"]["prediction"]["memory"]}
    assert result["peak_memory"].keys() <= result["predicted_peak_memory"].keys() == predicted.keys()
    parts = ("weights", "offloaded_buffers", "kv_cache", "working_set", "overhead")
    for key, value in result["predicted_peak_memory"].items():
        assert value == sum(predicted[key][part] for part in parts)
    assert set(result["ratios"]) == {"prefill", "decode_step"} and result["ratios"]["prefill"] > 0

    exported = tmp_path / "map.json"
    assert run(["export", "latest", "-o", str(exported), "--db", db], capsys)[0] == 0
    broken = json.loads(exported.read_text())
    broken.pop("lm_head")
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    code, _, err = run(
        ["validate", str(tmp_path / "broken.json"), str(folder), "--seq", "8", "--db", db], capsys
    )
    assert code == 1  # refused before loading, as price refuses it
    assert err == (
        "error: device_map: the device map places no module that contains 'lm_head': every unit "
        "that holds a weight or a buffer needs a place\n"
    )
    code, _, err = run(["validate", str(exported), "--db", db], capsys)
    assert code == 2 and "give MODEL, the folder with the weights, after MAP.json" in err


def test_the_limits_of_a_map_exported_with_them_hold_in_price_and_validate(
    weights_folder: Callable[[str], Path],
    one_run_db: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = weights_folder("llama")
    db = copy_of(one_run_db, tmp_path)
    wrapped = tmp_path / "map.json"
    assert run(["export", "latest", "--with-max-memory", "-o", str(wrapped), "--db", db], capsys)[0] == 0
    document = json.loads(wrapped.read_text())
    document["max_memory"] = {"cpu": 1000}  # far below what any map needs
    wrapped.write_text(json.dumps(document))
    workload = ["--seq", "8", "--new-tokens", "2", "--repeats", "1", "--json", "--db", db]

    code, out, err = run(["price", str(wrapped), str(folder), *workload], capsys)
    assert code == 0, err
    yours = json.loads(out)["yours"]
    # a map file names no workload: the one priced for is said
    assert json.loads(out)["workload"] == {"batch": 1, "seq": 8, "new_tokens": 2, "dtype": "float32"}
    code, out, _ = run(["price", str(wrapped), str(folder), *workload[:-3], "--db", db], capsys)
    assert code == 0 and "(predicted) - batch 1, seq 8, 2 new tokens, float32" in " ".join(out.split())
    (cpu,) = [memory for memory in yours["prediction"]["memory"] if memory["device"] == "cpu"]
    assert cpu["limit"] == 1000 and yours["feasible"] is False
    code, out, _ = run(["price", str(wrapped), str(folder), *workload, "--max-memory", "cpu=1GiB"], capsys)
    (cpu,) = [m for m in json.loads(out)["yours"]["prediction"]["memory"] if m["device"] == "cpu"]
    assert cpu["limit"] == 2**30  # the flag wins over the file
    # limits for a machine with another GPU: the file, not the command line, named it
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({**document, "max_memory": {"cpu": 2**30, "3": 2**30}}))
    code, _, err = run(["price", str(elsewhere), str(folder), *workload[:-3], "--db", db], capsys)
    assert code == 1 and err.startswith(
        "error: the map file's max_memory names device 3, which this hardware"
    )
    assert err.endswith("; --max-memory prices it under other limits\n")

    # Right outputs, but over its limits: no answer to them, and a script sees it in the status.
    code, out, err = run(["validate", str(wrapped), str(folder), *workload], capsys)
    assert code == 1 and err == "error: the map's peak memory went over the limit on cpu\n"
    checked = json.loads(out)
    assert checked["ok"] and checked["limits"] == {"cpu": 1000} and checked["over_limits"] == ["cpu"]
    assert checked["fits"] is False
    code, out, _ = run(["validate", str(wrapped), str(folder), *workload[:-3], "--db", db], capsys)
    assert code == 1 and out.startswith("validation: ok, but its peak memory went over the limit on cpu\n")
    assert "of 1000 B allowed OVER by" in out

    document["dtype"] = "bfloat16"  # the dtype the file was planned in applies, unless --dtype
    wrapped.write_text(json.dumps(document))
    weights = {}
    for flags in ([], ["--dtype", "float32"]):
        code, out, err = run(["price", str(wrapped), str(folder), *workload, *flags], capsys)
        assert code == 0, err
        weights[bool(flags)] = sum(m["weights"] for m in json.loads(out)["yours"]["prediction"]["memory"])
    assert weights[True] > 1.9 * weights[False]  # float32 asked: twice the bytes of the file's bfloat16


def beside_its_run(one_run_db: Path, tmp_path: Path, **changes: Any) -> tuple[str, Run, int]:
    """A copy of the one-run database, its complete run, and the id of a run stored after it: that
    run with `changes`."""
    db = copy_of(one_run_db, tmp_path)
    with Store(db) as store:
        complete = store.latest_run()
        assert complete is not None and complete.winner is not None
        return db, complete, store.create_run(dataclasses.replace(complete, **changes))


@pytest.mark.parametrize("json_", [False, True])
def test_a_search_without_seeds_that_found_no_map_says_which_left_out_map_fits_and_exits_non_zero(
    json_: bool, config_folder: Callable[[str], Path], db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--trials 0 --no-seed`` completes a run with no winner: the command must not hint at an
    export that fails, and names the priced maps that fit."""
    args = ["optimize", str(config_folder("llama")), "--seq", "8", "--new-tokens", "2", "--repeats", "1"]
    extra = ["--json"] if json_ else []
    code, out, err = run([*args, "--trials", "0", "--no-seed", "--db", db, *extra], capsys)
    with Store(db) as store:
        stored = store.latest_run()
    assert stored is not None and stored.winner is None and stored.status is RunStatus.COMPLETE
    fitting = [candidate.name for candidate in stored.baselines if candidate.feasible]
    assert "exact" in fitting
    assert code == 1 and "export it with" not in out
    errors = [line for line in err.strip().splitlines() if not line.startswith("note: ")]  # a busy machine's
    assert errors == [
        f"error: run {stored.id} found no map that fits in its 0 trials, nothing to export; "
        f"{', '.join(fitting)} fit: leave out --no-seed"
    ]
    if json_:  # the run's document, then nothing else: a script reads the winner as null
        assert json.loads(out)["winner"] is None


def test_exporting_a_failed_latest_run_says_why_and_names_the_newest_complete_one(
    one_run_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, complete, failed = beside_its_run(one_run_db, tmp_path, study_name="tuner-failed", winner=None)
    with Store(db) as store:
        store.fail_run(failed, "no such model folder: ./nope")
    code, out, err = run(["export", "latest", "--db", db], capsys)
    assert code != 0 and not out
    assert err.strip() == (
        f"error: run {failed} has no map (failed: no such model folder: ./nope); "
        f"the newest complete run is {complete.id}"
    )


def test_showing_a_run_that_failed_before_pricing_a_map_gives_its_title_and_why_without_an_empty_table(
    one_run_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nothing_priced = dict(study_name="tuner-failed", winner=None, baselines=())
    db, complete, failed = beside_its_run(one_run_db, tmp_path, **nothing_priced)
    with Store(db) as store:
        store.fail_run(failed, "no device map fits: device 0 needs 1.0 GiB more")
    code, out, _ = run(["show", str(failed), "--db", db], capsys)
    assert code == 0
    title, asked, why = out.strip().splitlines()
    assert title.startswith(f"run {failed}: ") and title.endswith(f"(failed, {complete.trials} trials)")
    limits = ", ".join(f"{device} {format_bytes(limit)}" for device, limit in complete.max_memory.items())
    assert asked.strip() == f"asked: {limits}" and complete.max_memory  # the limits every map was held to
    assert why.strip() == "failed: no device map fits: device 0 needs 1.0 GiB more"


def test_exporting_an_interrupted_run_gives_its_best_map_so_far_and_says_so(
    one_run_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, complete, stopped = beside_its_run(
        one_run_db, tmp_path, study_name="tuner-stopped", status=RunStatus.RUNNING
    )
    assert complete.winner is not None
    with Store(db) as store:
        store.finish_run(
            stopped, status=RunStatus.INTERRUPTED, winner=complete.winner, trials=48, phase_seconds={}
        )
    code, out, err = run(["export", str(stopped), "--db", db], capsys)
    assert code == 0 and json.loads(out) == complete.winner.device_map.to_hf()
    assert err.strip() == (
        f"warning: run {stopped} was interrupted after 48 trials: its map is the best so far; "
        f"tuner optimize --resume {stopped} finishes it"
    )
    code, out, err = run(["export", str(complete.id), "--db", db], capsys)
    assert code == 0 and not err  # a complete run's map is its answer


def test_validate_refuses_a_run_with_a_model_it_was_not_tuned_for(
    weights_folder: Callable[[str], Path],
    one_run_db: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = weights_folder("t5")
    db = copy_of(one_run_db, tmp_path)
    before = run(["show", "latest", "--json", "--db", db], capsys)[1]
    code, out, err = run(["validate", "latest", str(other), "--repeats", "1", "--db", db], capsys)
    assert code != 0 and not out
    assert len(err.strip().splitlines()) == 1, err
    assert f"was tuned for {json.loads(before)['model_name']}" in err and "t5" in err
    assert run(["show", "latest", "--json", "--db", db], capsys)[1] == before


class HardwareNotes(Recorder):
    def __init__(self) -> None:
        self.notes: list[str] = []
        self.phases: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)

    def phase(self, description: str) -> None:
        self.phases.append(description)


def test_hardware_stored_by_an_older_tuner_is_measured_again(
    config_folder: Callable[[str], Path], db: str
) -> None:
    from profiler.hardware import MEASURING_METHOD
    from profiler.hardware import describe_hardware
    from tuner.core.domain import Device
    from tuner.core.domain import Link

    described = describe_hardware()
    # as a tuner of before the page cache and the fixed costs stored it: no method, no such figures
    old = dataclasses.replace(
        described,
        devices=(
            *(d for d in described.devices if d.key != "disk"),
            Device("disk", "disk", "/tmp", 1 << 40, 1 << 40),
        ),
        links=(Link("disk", "cpu", 5e-3, 1e9),),
        source="measured",
    )
    with Store(db) as store:
        store.save_hardware(old)
    listener = HardwareNotes()
    tuned(config_folder("llama"), db, listener, seq=8, new_tokens=2, repeats=1, trials=2)
    with Store(db) as store:
        again = store.find_hardware(described.fingerprint)
    assert again is not None and again.method == MEASURING_METHOD and again.page_cache is not None
    assert again.link("disk", "cpu") != old.link("disk", "cpu")  # measured, not the stored figure
    assert any("older tuner" in note for note in listener.notes)
    assert "measuring this machine" in listener.phases


def test_hardware_stored_by_this_tuner_is_reused(
    config_folder: Callable[[str], Path], db: str, this_machine: HardwareProfile
) -> None:
    # a figure no measurement gives, so a profile measured meanwhile would show
    marked = dataclasses.replace(this_machine, generate_step_s=1.25)
    with Store(db) as store:
        store.save_hardware(marked)
    listener = HardwareNotes()
    tuned(config_folder("llama"), db, listener, seq=8, new_tokens=2, repeats=1, trials=2)
    with Store(db) as store:
        assert store.find_hardware(this_machine.fingerprint) == marked
    assert "measuring this machine" not in listener.phases
    assert not any("older tuner" in note for note in listener.notes)


def test_cancel_withdraws_a_queued_run_and_refuses_one_that_ended(
    one_run_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = copy_of(one_run_db, tmp_path)
    queued = tuner.queue_run("/models/m", hardware="1xT4-16GB", dtype="float16", new_tokens=8, db=db)
    code, out, err = run(["export", str(queued.id), "--db", db], capsys)
    assert (code, out, err) == (1, "", f"error: run {queued.id} has no map yet (queued)\n")  # never searched

    code, out, err = run(["cancel", str(queued.id), "--db", db], capsys)
    assert (code, out, err) == (0, f"run {queued.id} (/models/m): cancelled before a worker took it\n", "")
    assert tuner.get_run(queued.id, db=db).status is RunStatus.FAILED
    code, out, err = run(["cancel", str(queued.id), "--db", db], capsys)
    assert code != 0 and not out
    assert err == f"error: run {queued.id} has failed: only a queued or interrupted run can be cancelled\n"

    again = tuner.queue_run("/models/m", hardware="1xT4-16GB", dtype="float16", new_tokens=8, db=db)
    code, out, _ = run(["cancel", "latest", "--json", "--db", db], capsys)
    assert code == 0 and (json.loads(out)["id"], json.loads(out)["status"]) == (again.id, "failed")
    with pytest.raises(tuner.ConstraintError, match="run must be a whole number of at least 1"):
        tuner.cancel_run(True, db=db)


def test_validate_describes_a_vision_model_s_prompt_and_keeps_its_default_seq(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.families import save_family

    folder = save_family("vit", tmp_path / "vit")
    (tmp_path / "map.json").write_text(json.dumps({"": "cpu"}))
    args = ["validate", str(tmp_path / "map.json"), str(folder), "--new-tokens", "0", "--repeats", "1"]
    code, out, err = run([*args, "--seq", "64", "--db", f"sqlite:///{tmp_path / 'tuner.db'}"], capsys)
    assert code == 0, err
    assert "run with batch 1, one image each, 0 new tokens" in out and "seq" not in out
    assert "note: seq 64 does not apply to ViTForImageClassification, which takes images" in err
