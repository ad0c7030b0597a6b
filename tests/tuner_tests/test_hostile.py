"""Hostile files and arguments, as a user meets them on the command line: a damaged checkpoint, a
damaged row in the database, a database that cannot be written, a measurement where every map
failed, a password in the database URL. Each gives one line and a non-zero exit, and leaves the
database as it was (its rows counted, its integrity checked).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save_file

import tuner
from tests.tuner_tests.conftest import Recorder
from tests.tuner_tests.conftest import run
from tests.tuner_tests.conftest import table_rows
from tests.tuner_tests.conftest import tuned
from tuner.core.exceptions import StorageError

pytestmark = pytest.mark.usefixtures("one_thread")

WORKLOAD = ["--seq", "8", "--new-tokens", "2", "--repeats", "1"]


def error_line(err: str) -> str:
    """The one line of an error or warning, past the notes a busy machine adds before it."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def two_runs(
    weights_folder: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
    store_this_machine: Callable[[str], str],
) -> Path:
    """A database holding two complete runs of the tiny Llama (ids 1 and 2)."""
    db_file = tmp_path_factory.mktemp("two-runs") / "tuner.db"
    store_this_machine(f"sqlite:///{db_file}")
    for seq in (8, 12):
        tuned(weights_folder("llama"), f"sqlite:///{db_file}", seq=seq, new_tokens=2, repeats=1, trials=3)
    return db_file


@pytest.fixture
def db_file(two_runs: Path, tmp_path: Path) -> Path:
    """A copy of `two_runs` of the test's own."""
    copy = tmp_path / "tuner.db"
    shutil.copyfile(two_runs, copy)
    return copy


# -- a damaged checkpoint ------------------------------------------------------------------------


def damaged(folder: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the model folder whose safetensors file is cut in half, or random bytes."""
    copy = tmp_path / f"model-{how}"
    shutil.copytree(folder, copy)
    weights = copy / "model.safetensors"
    if how == "truncated":
        with weights.open("r+b") as handle:
            handle.truncate(weights.stat().st_size // 2)
    else:
        weights.write_bytes(os.urandom(50_000))
    return copy


@pytest.mark.parametrize(
    ("how", "says"),
    [("truncated", "is truncated: its tensors need"), ("random", "is not a safetensors file")],
)
@pytest.mark.parametrize("command", ["profile", "optimize", "validate"])
def test_a_damaged_checkpoint_is_named_and_nothing_is_stored(
    weights_folder: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    how: str,
    says: str,
    command: str,
) -> None:
    folder = damaged(weights_folder("llama"), tmp_path, how)
    map_file = tmp_path / "map.json"
    map_file.write_text('{"": "cpu"}')
    db = tmp_path / "tuner.db"
    args = {
        "profile": ["profile", str(folder), *WORKLOAD],
        "optimize": ["optimize", str(folder), *WORKLOAD, "--trials", "3"],
        "validate": ["validate", str(map_file), str(folder), "--seq", "8"],
    }[command]
    capsys.readouterr()
    code, out, err = run([*args, "--db", f"sqlite:///{db}"], capsys)
    assert code == 1 and out == ""
    assert error_line(err).startswith(f"error: {folder / 'model.safetensors'} {says}")
    assert "save or download the checkpoint again" in err
    assert not db.exists()  # refused before the database was opened


def as_pytorch_checkpoint(folder: Path, tmp_path: Path, pickled: bool = False) -> Path:
    """A copy of the model folder with its weights in ``pytorch_model.bin`` instead: torch.save's
    zip archive, or the pickled format older torch wrote."""
    copy = tmp_path / f"model-bin-{'pickled' if pickled else 'zip'}"
    shutil.copytree(folder, copy)
    weights = copy / "model.safetensors"
    torch.save(load_file(weights), copy / "pytorch_model.bin", _use_new_zipfile_serialization=not pickled)
    weights.unlink()
    return copy


@pytest.mark.parametrize("cut", ["end", "middle"])
def test_a_truncated_pytorch_checkpoint_is_named_and_nothing_is_stored(
    weights_folder: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], cut: str
) -> None:
    folder = as_pytorch_checkpoint(weights_folder("llama"), tmp_path)
    weights = folder / "pytorch_model.bin"
    data = weights.read_bytes()
    half = len(data) // 2
    # the second half lost, or 4 KiB of the middle: the archive's directory, at its end, is then kept
    weights.write_bytes(data[:half] if cut == "end" else data[:half] + data[half + 4096 :])
    db = tmp_path / "tuner.db"
    capsys.readouterr()
    code, out, err = run(["optimize", str(folder), *WORKLOAD, "--hardware", "1xA10G-24GB",
                          "--trials", "3", "--db", f"sqlite:///{db}"], capsys)  # fmt: skip
    assert code == 1 and out == ""
    assert error_line(err).startswith(f"error: {weights} is truncated or damaged")
    assert "save or download the checkpoint again" in err
    assert not db.exists()


@pytest.mark.parametrize("pickled", [False, True], ids=["zip", "pickled"])
def test_a_whole_pytorch_checkpoint_is_read_as_it_is(
    weights_folder: Callable[[str], Path], tmp_path: Path, pickled: bool
) -> None:
    from profiler.source import resolve_source

    folder = as_pytorch_checkpoint(weights_folder("llama"), tmp_path, pickled)
    source = resolve_source(str(folder))
    assert source.weights == "pytorch" and source.weight_files == (folder / "pytorch_model.bin",)


# -- a damaged row ---------------------------------------------------------------------------------


DAMAGES = {
    "map not JSON": "UPDATE candidates SET device_map_json = '{not json' WHERE run_id = 1 AND name = 'auto'",
    "unknown device": (
        'UPDATE candidates SET device_map_json = \'{"placements": [["lm_head", "gpu9"]]}\' '
        "WHERE run_id = 1 AND name = 'auto'"
    ),
    "status": "UPDATE runs SET status = 'BOGUS' WHERE id = 1",
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_run_is_named_and_hides_no_other(
    db_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    with sqlite3.connect(db_file) as connection:
        connection.execute(DAMAGES[damage])
    before = table_rows(db_file)
    db = ["--db", f"sqlite:///{db_file}"]

    code, out, err = run(["history", *db], capsys)
    assert code == 0
    assert error_line(err).startswith(f"warning: database sqlite:///{db_file}: run 1 is unreadable: ")
    assert "│   2 │" in out and "│   1 │" not in out
    code, out, err = run(["history", "--json", *db], capsys)
    assert code == 0 and [listed["id"] for listed in json.loads(out)] == [2]

    report = tmp_path / "report.html"
    for args in (["show", "2"], ["export", "2"], ["report", "2", "-o", str(report)]):
        code, out, err = run([*args, *db], capsys)
        assert code == 0, err
    assert report.stat().st_size > 0
    for args in (["show", "1"], ["export", "1"], ["report", "1", "-o", str(tmp_path / "no.html")]):
        code, out, err = run([*args, *db], capsys)
        assert code == 1 and out == ""
        assert error_line(err).startswith(f"error: database sqlite:///{db_file}: run 1 is unreadable: ")
    assert not (tmp_path / "no.html").exists()
    assert table_rows(db_file) == before


# -- a database that cannot be written ----------------------------------------------------------


class Phases(Recorder):
    """Remembers every phase `optimize` announced."""

    def __init__(self) -> None:
        self.phases: list[str] = []

    def phase(self, description: str) -> None:
        self.phases.append(description)


@pytest.fixture
def read_only(db_file: Path) -> Iterator[str]:
    """`db_file` as a database this process may only read (SQLite's read-only open mode: what a
    file without write permission is, whoever runs the tests)."""
    with sqlite3.connect(db_file) as connection:  # a rollback journal: readable without writing
        connection.execute("PRAGMA journal_mode = DELETE")
    yield f"sqlite:///file:{db_file}?mode=ro&uri=true"


def test_a_read_only_database_is_refused_before_any_work(
    weights_folder: Callable[[str], Path],
    db_file: Path,
    read_only: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = weights_folder("llama")
    before = table_rows(db_file)
    listener = Phases()
    with pytest.raises(StorageError, match="cannot be written .*attempt to write a readonly database"):
        tuner.optimize(
            str(folder), seq=16, new_tokens=2, repeats=1, trials=3, db=read_only, listener=listener
        )
    assert listener.phases == []  # neither this machine measured nor the model profiled

    capsys.readouterr()
    for args in (
        ["optimize", str(folder), "--seq", "16", "--new-tokens", "2", "--trials", "3"],
        ["profile", str(folder), "--seq", "16"],
        ["validate", "1", str(folder)],
        ["hardware"],
    ):
        code, out, err = run([*args, "--db", read_only], capsys)
        assert code == 1 and out == "", args
        line = error_line(err)
        assert line.startswith("error: database sqlite:///file") and "cannot be written" in line, args
        assert "nothing was done" in line
    # reading needs no writing
    code, out, _ = run(["show", "1", "--db", read_only], capsys)
    assert code == 0 and out
    assert table_rows(db_file) == before


@pytest.mark.postgres
def test_a_read_only_postgres_database_is_refused_before_any_work(
    weights_folder: Callable[[str], Path],
    postgres_url: str,
    store_this_machine: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = weights_folder("llama")
    store_this_machine(postgres_url)
    tuned(folder, postgres_url, seq=8, new_tokens=2, repeats=1, trials=3)
    read_only = f"{postgres_url}?options=-c%20default_transaction_read_only%3Don"
    capsys.readouterr()
    code, out, err = run(["optimize", str(folder), *WORKLOAD, "--trials", "3", "--db", read_only], capsys)
    assert code == 1 and out == ""
    assert "cannot be written (cannot execute UPDATE in a read-only transaction)" in error_line(err)
    assert [r.id for r in tuner.list_runs(db=postgres_url)] == [1]


# -- every measured map failed ----------------------------------------------------------------


def test_measure_exits_non_zero_when_every_map_failed(
    weights_folder: Callable[[str], Path],
    tmp_path: Path,
    store_this_machine: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # without lm_head's weight every load draws it afresh: no map gives the reference's outputs
    folder = tmp_path / "model"
    shutil.copytree(weights_folder("llama"), folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    db_file = tmp_path / "tuner.db"
    store_this_machine(f"sqlite:///{db_file}")
    args = ["optimize", str(folder), *WORKLOAD, "--trials", "3", "--measure", "1", "--measure-rounds", "1"]
    capsys.readouterr()
    code, out, err = run([*args, "--db", f"sqlite:///{db_file}"], capsys)
    assert code == 1 and "stored as run 1" in out
    line = error_line(err)
    assert line.startswith(
        "error: every measured map failed (run 1 keeps each reason: tuner show 1); first: "
    )
    assert "outputs differ" in line
    measured = tuner.list_candidates(1, measured_only=True, db=f"sqlite:///{db_file}")
    assert measured and all(c.measured_s is None and c.measure_error for c in measured)


# -- secrets ------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_password_in_the_database_url_is_never_printed(
    weights_folder: Callable[[str], Path],
    postgres_url: str,
    store_this_machine: Callable[[str], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the server trusts local connections, so the password is given and ignored
    url = store_this_machine(postgres_url.replace("postgres@", "postgres:s3cret-pw@"))
    missing = url.rsplit("/", 1)[0] + "/no_such_database_here"
    folder = weights_folder("llama")
    capsys.readouterr()  # transformers' progress bars, when this test saved the folder first
    report = tmp_path / "report.html"
    printed = []
    for args in (
        ["db", "path", "--db", url],
        ["db", "upgrade", "--db", url],
        ["optimize", str(folder), *WORKLOAD, "--trials", "3", "--db", url],
        ["history", "--db", url],
        ["show", "1", "--db", url],
        ["show", "7", "--db", url],
        ["report", "1", "-o", str(report), "--db", url],
        ["history", "--db", missing],
        ["optimize", str(folder), *WORKLOAD, "--db", missing],
    ):
        code, out, err = run(args, capsys)
        printed.append(out + err)
        assert code in (0, 1), args
    assert all("s3cret" not in text for text in printed)
    assert "s3cret" not in report.read_text()
    assert printed[0].strip() == url.replace("s3cret-pw", "***")
    assert "no stored run has id 7" in printed[5] and "postgres:***@" in printed[5]


@pytest.mark.parametrize(
    ("model", "refusal"),
    [
        ("./no-such-model", "no such model folder: ./no-such-model"),
        # an existing folder is named by its absolute path, as the run would store it
        (
            "./broken",
            "{here}/broken/config.json is not valid JSON: Expecting value: line 1 column 39 (char 38)",
        ),
    ],
    ids=["missing folder", "config not JSON"],
)
def test_a_model_folder_that_cannot_be_read_is_refused_before_torch_loads(
    tmp_path: Path, model: str, refusal: str
) -> None:
    """The commonest typos cost a fraction of a second, not the seconds torch and transformers
    take to import (6.4 s here before for a missing folder, 8.7 s for a config cut short,
    through the CLI)."""
    import subprocess
    import sys

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "llama", "vocab_size": ')
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    script = (
        "import sys, tuner\n"
        "try:\n"
        f"    tuner.optimize({model!r}, db={db!r})\n"
        "except tuner.ModelSourceError as error:\n"
        "    print(error)\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert shown.stdout.splitlines() == [refusal.format(here=tmp_path), "[]"], shown.stderr
    assert not (tmp_path / "tuner.db").exists()
