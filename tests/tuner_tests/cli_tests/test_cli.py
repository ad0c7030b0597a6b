"""The command line as users meet it: exit codes, one-line errors, JSON, reuse from the database."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import tuner
from tests.families import save_family
from tests.tuner_tests.conftest import run


def profile_count(db_file: Path) -> int:
    if not db_file.exists():
        return 0
    with sqlite3.connect(db_file) as connection:
        tables = {row[0] for row in connection.execute("select name from sqlite_master where type='table'")}
        if "profiles" not in tables:
            return 0
        return int(connection.execute("select count(*) from profiles").fetchone()[0])


def test_profile_json_then_reuse(
    config_folder: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    args = ["profile", str(config_folder("llama")), "--seq", "8", "--new-tokens", "2", "--repeats", "1"]
    code, out, err = run([*args, "--json", "--db", db], capsys)
    assert code == 0
    first = json.loads(out)
    assert first["reused"] is False
    assert [u["name"] for u in first["graph"]["units"]][:2] == ["model.embed_tokens", "model.rotary_emb"]
    assert {u["phase"] for u in first["units"]} == {"prefill", "decode"}

    code, out, _ = run([*args, "--json", "--db", db], capsys)
    second = json.loads(out)
    assert code == 0
    assert second["reused"] is True
    assert second["profile_id"] == first["profile_id"]
    assert second["units"] == first["units"]  # the very numbers stored, not a new measurement
    assert profile_count(tmp_path / "tuner.db") == 1

    code, out, err = run([*args, "--db", db], capsys)
    assert code == 0
    assert "model.layers.2" in out and "from the database" in out
    assert "random weights" not in err  # how a profile is measured: this one was not, now


def test_a_device_given_twice_is_measured_once_and_a_bad_one_is_named(
    config_folder: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    args = ["profile", str(config_folder("llama")), "--seq", "8", "--new-tokens", "2", "--repeats", "1"]
    code, out, err = run([*args, "--device", "cpu", "--device", "CPU", "--json", "--db", db], capsys)
    assert code == 0, err
    assert {unit["device"] for unit in json.loads(out)["units"]} == {"cpu"}
    assert tuner.profile(config_folder("llama"), seq=8, new_tokens=2, repeats=1, devices="cpu", db=db).reused
    with pytest.raises(tuner.ConstraintError, match=r"^devices: 'foo' is not a device \(use 0, 1, "):
        tuner.profile(config_folder("llama"), devices=["cpu", "foo"], db=db)
    with pytest.raises(tuner.WorkloadError, match=r"^dtype: unknown 'fp8'; choose one of auto, "):
        tuner.profile(config_folder("llama"), dtype="fp8", db=db)
    assert profile_count(tmp_path / "tuner.db") == 1


def test_a_vision_models_profile_is_titled_by_the_image_it_takes_not_a_seq(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = save_family("vit", tmp_path / "vit", weights=False)
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    code, out, _ = run(["profile", str(folder), "--repeats", "1", "--db", db], capsys)
    assert code == 0
    title = " ".join(out.split("┏")[0].split())
    assert title.endswith("(ViTForImageClassification, float32) - batch 1, one image each, 0 new tokens")


def test_force_measures_again(
    config_folder: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    args = ["profile", str(config_folder("bert")), "--seq", "8", "--repeats", "1", "--json", "--db", db]
    first = json.loads(run(args, capsys)[1])
    forced = json.loads(run([*args, "--force"], capsys)[1])
    assert first["workload"]["new_tokens"] == 0  # BERT does not generate: the default follows the model
    assert forced["reused"] is False
    assert profile_count(tmp_path / "tuner.db") == 1


BAD_INPUTS: dict[str, tuple[list[str], str]] = {
    "missing path": (["profile", "{tmp}/does-not-exist"], "no such model folder"),
    "no config": (["profile", "{empty}"], "no config.json"),
    "corrupt config": (["profile", "{corrupt}"], "not valid JSON"),
    "unknown dtype": (["profile", "{llama}", "--dtype", "float8"], "float8"),
    "batch zero": (["profile", "{llama}", "--batch", "0"], "--batch"),
    "negative batch": (["profile", "{llama}", "--batch", "-3"], "--batch"),
    "hub id offline": (["profile", "nobody/not-cached-model"], "hf download nobody/not-cached-model"),
    "generate on encoder": (["profile", "{bert}", "--new-tokens", "4"], "does not generate"),
    # numbers past the largest the database stores: refused, never the driver's OverflowError
    "batch past the database": (
        ["profile", "{llama}", "--batch", str(2**31)],
        "batch must be at most 2147483647",
    ),
    "run past the database": (["export", str(10**25)], f"no stored run has id {10**25}"),
    "limit past the database": (["history", "--limit", str(2**64)], "limit must be at most 2147483647"),
    "negative seed": (["optimize", "{llama}", "--seed", "-5"], "'--seed': -5 is not in the range"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_leaves_the_database(
    case: str, config_folder: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{not json")
    db_file = tmp_path / "tuner.db"
    db = f"sqlite:///{db_file}"
    good = [
        "profile",
        str(config_folder("gpt2")),
        "--seq",
        "8",
        "--new-tokens",
        "1",
        "--repeats",
        "1",
        "--db",
        db,
    ]
    assert run([*good, "--json"], capsys)[0] == 0
    before = db_file.read_bytes()

    template, message = BAD_INPUTS[case]
    places = {
        "tmp": str(tmp_path),
        "empty": str(tmp_path / "empty"),
        "corrupt": str(tmp_path / "corrupt"),
        "llama": str(config_folder("llama")),
        "bert": str(config_folder("bert")),
    }
    args = [part.format(**places) for part in template]
    code, out, err = run([*args, "--db", db], capsys)
    assert code != 0
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert "Traceback" not in err
    assert db_file.read_bytes() == before


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///file::memory:?uri=true",
        "sqlite:///file:x?mode=memory&uri=true",
    ],
)
def test_an_in_memory_database_is_refused_before_any_work(
    url: str, config_folder: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """It would keep nothing, and Optuna's heartbeat threads would each see an empty one of
    their own (pages of their tracebacks, then an unexpected KeyError)."""
    folder = str(config_folder("llama"))
    for args in (["optimize", folder, "--trials", "2"], ["history"]):
        code, out, err = run([*args, "--db", url], capsys)
        assert (code, out) == (1, "")
        assert err.startswith("error: sqlite:") and err.endswith(
            ": an in-memory SQLite database keeps nothing; name a file (sqlite:///tuner.db, or its path)\n"
        ), err


def test_unwritable_database_path(
    config_folder: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        ["profile", str(config_folder("llama")), "--db", "sqlite:////proc/no/tuner.db"], capsys
    )
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert "/proc/no/tuner.db" in err


def test_db_url_from_environment(
    config_folder: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db_file = tmp_path / "from-env.db"
    monkeypatch.setenv("TUNER_DB", f"sqlite:///{db_file}")
    code, _, _ = run(
        ["profile", str(config_folder("llama")), "--seq", "8", "--repeats", "1", "--json"], capsys
    )
    assert code == 0
    assert profile_count(db_file) == 1


@pytest.mark.parametrize("group", [[], ["db"]])
def test_a_command_group_given_alone_prints_its_help(
    group: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(group, capsys)
    assert (code, err) == (0, "")
    assert (
        out.startswith(f"Usage: {' '.join(['tuner', *group])} [OPTIONS] COMMAND [ARGS]...")
        and "Commands:" in out
    )


def test_db_before_the_command_is_told_where_it_goes(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--db", "sqlite://", "history"], capsys)  # click alone would suggest --debug
    assert (
        code == 2 and err == "error: --db goes after the command (tuner history --db URL), or set TUNER_DB\n"
    )
    code, _, err = run(["history", "--dbx", "sqlite://"], capsys)
    assert code == 2 and err == "error: No such option '--dbx'. Did you mean '--db'?\n"
    code, _, err = run(["history", "--debug"], capsys)  # a usage error, not a traceback
    assert code == 2 and err == "error: --debug goes before the command (tuner --debug show 7)\n"
    for command in (["show", "-1"], ["export", "-12"]):  # click reads them as options
        code, _, err = run(command, capsys)
        given = command[1]
        assert (
            code == 2
            and err == f"error: no run has id {given}: run ids count from 1 (tuner history lists them)\n"
        )
    code, _, err = run(["optimize", "gpt2", "-5"], capsys)  # takes no run: click's own words
    assert code == 2 and err == "error: No such option '-5'.\n"


def test_console_script_reports_errors_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "TUNER_DB": f"sqlite:///{tmp_path / 'tuner.db'}"}
    done = subprocess.run(
        [sys.executable, "-m", "tuner", "profile", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: no such model folder: {tmp_path / 'missing'}"


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["profile", "--help"], capsys)
    assert code == 0
    assert "--new-tokens" in out and "Examples:" in out


def test_db_upgrade_says_what_it_did_and_path_names_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from storage import SCHEMA_REVISION

    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    created = f"{db}: schema created (revision {SCHEMA_REVISION})\n"
    assert run(["db", "upgrade", "--db", db], capsys)[:2] == (0, created)
    current = f"{db}: schema is current (revision {SCHEMA_REVISION})\n"
    assert run(["db", "upgrade", "--db", db], capsys)[:2] == (0, current)
    assert run(["db", "path", "--db", db], capsys)[1].strip() == db

    old = tmp_path / "0010.db"
    old.write_bytes((Path(__file__).parents[2] / "storage_tests" / "upgrade_assets" / "0010.db").read_bytes())
    upgraded = f"sqlite:///{old}: schema upgraded from revision 0010 to {SCHEMA_REVISION}\n"
    assert run(["db", "upgrade", "--db", f"sqlite:///{old}"], capsys)[:2] == (0, upgraded)


@pytest.mark.parametrize("command", [["db", "path"], ["history"]])
def test_a_blank_db_names_no_database_for_any_command(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # `db path` printed the default database for it, which history then refused
    code, out, err = run([*command, "--db", " "], capsys)
    assert (code, out) == (1, "") and err.startswith("error: ' ' is not a database URL"), err


def test_db_takes_a_sqlite_files_path_as_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--db runs.db`` is the file runs.db here, not an unparsable URL: every command, and a
    worker started elsewhere, reads the same file."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    assert run(["db", "upgrade", "--db", "runs.db"], capsys)[1].startswith(f"{url}: schema created")
    assert (tmp_path / "runs.db").is_file()
    assert run(["db", "path", "--db", "runs.db"], capsys)[1].strip() == url
    monkeypatch.setenv("TUNER_DB", "runs.db")
    assert run(["history", "--json"], capsys)[:2] == (0, "[]\n")


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["optimize", "no-such-model-folder", "--json"], 1),  # the library's error
        (["history", "--status", "bogus", "--json"], 2),  # click's usage error
        (["show", "7", "--json"], 1),  # no such run
    ],
)
def test_an_error_under_json_is_a_json_document_on_stdout_too(
    args: list[str], status: int, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([*args, "--db", db_url], capsys)
    assert code == status
    (line,) = err.splitlines()
    assert json.loads(out) == {"error": line.removeprefix("error: ")}
