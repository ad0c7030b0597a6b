"""`tuner hardware` with spec files: show without measuring, export what was measured, list; and
this machine as stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from profiler.hardware import describe_hardware
from profiler.spec import SPECS_DIR
from profiler.spec import load_spec
from profiler.spec import shipped_specs
from storage import Store
from tests.tuner_tests.conftest import run
from tuner.core.codec import to_dict


def test_list_specs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["hardware", "--list-specs"], capsys)
    assert code == 0
    listed, _, folder = out.partition("\n\n")
    lines = listed.splitlines()
    assert len(lines) == len(shipped_specs())
    assert any(line.startswith("8xH100-80GB-nvlink ") and "DGX H100" in line for line in lines)
    # where to copy one from: the folder holds a file for each name listed
    where = folder.removeprefix("The files are in ").partition(": copy the nearest")[0]
    assert {path.stem for path in Path(where).glob("*.json")} == set(shipped_specs())

    code, out, _ = run(["hardware", "--list-specs", "--json"], capsys)
    assert code == 0
    assert json.loads(out) == shipped_specs()


def test_spec_json_is_one_document_and_stores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_file = tmp_path / "tuner.db"
    args = ["hardware", "--spec", "2xA100-80GB-nvlink", "--json", "--db", f"sqlite:///{db_file}"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    shown = json.loads(out)  # the whole of stdout is one JSON document
    expected = load_spec("2xA100-80GB-nvlink")
    assert shown["fingerprint"] == expected.fingerprint
    assert shown["source"] == "spec"
    assert [d["name"] for d in shown["devices"] if d["kind"] == "cuda"] == ["NVIDIA A100 80GB PCIe"] * 2
    assert not db_file.exists()  # nothing measured, nothing stored


def test_spec_tables(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["hardware", "--spec", "8xH100-80GB-nvlink"], capsys)
    assert code == 0
    assert "devices (spec)" in out and "NVIDIA H100 80GB HBM3" in out
    assert "989.4 TFLOP/s" in out
    assert "nothing measured" in out


def test_spec_and_export_together_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["hardware", "--spec", "1xA10G-24GB", "--export", str(tmp_path / "x.json")], capsys)
    assert code == 2
    assert err.startswith("error: --spec") and "--export" in err
    assert not (tmp_path / "x.json").exists()


def test_unknown_spec_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["hardware", "--spec", "16xB200"], capsys)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("error: no spec file or shipped spec named '16xB200' (shipped specs: 1xA10G-24GB")


def test_broken_spec_file_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "a100.json"
    document = json.loads((SPECS_DIR / "2xA100-80GB-nvlink.json").read_text())
    del document["devices"][1]["memory"]
    spec.write_text(json.dumps(document))
    code, _, err = run(["hardware", "--spec", str(spec)], capsys)
    assert code == 1
    assert err == f"error: spec {spec}: devices[1].memory: missing\n"


def test_export_to_a_missing_folder_fails_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_file = tmp_path / "tuner.db"
    target = tmp_path / "missing" / "box.json"
    code, _, err = run(["hardware", "--export", str(target), "--db", f"sqlite:///{db_file}"], capsys)
    assert code == 2
    assert "--export" in err and "no folder" in err
    assert not db_file.exists()


def test_export_measures_stores_and_writes_a_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from storage import Store

    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    target = tmp_path / "this-box.json"
    code, out, err = run(["hardware", "--export", str(target), "--json", "--db", db], capsys)
    assert code == 0, err
    measured = json.loads(out)  # still one JSON document on stdout; the note goes to stderr
    assert f"spec written to {target}" in err
    assert {d["key"] for d in measured["devices"]} >= {"cpu", "disk"}
    assert any(link["src"] == "disk" and link["dst"] == "cpu" for link in measured["links"])

    loaded = load_spec(target)
    assert loaded.fingerprint == measured["fingerprint"]
    with Store(db) as store:
        stored = store.find_hardware(measured["fingerprint"])
    assert stored is not None
    assert loaded.devices == stored.devices
    assert loaded.links == stored.links

    code, out, _ = run(["hardware", "--spec", str(target), "--json"], capsys)
    assert code == 0
    assert json.loads(out)["fingerprint"] == measured["fingerprint"]


def test_stored_shows_what_optimize_uses_without_measuring(
    measured_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store(measured_db_url) as store:
        expected = store.find_hardware(describe_hardware().fingerprint)
    assert expected is not None
    code, out, err = run(["hardware", "--stored", "--json", "--db", measured_db_url], capsys)
    assert code == 0, err
    assert json.loads(out) == {"fingerprint": expected.fingerprint, **to_dict(expected)}
    code, out, _ = run(["hardware", "--stored", "--db", measured_db_url], capsys)
    assert code == 0 and f"hardware fingerprint {expected.fingerprint} (stored" in out

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    Store(empty).close()
    code, _, err = run(["hardware", "--stored", "--db", empty], capsys)
    assert code != 0
    assert (
        err.strip() == "error: this machine was never measured into this database: tuner hardware measures it"
    )
    code, _, err = run(["hardware", "--stored", "--list-specs"], capsys)
    assert code != 0 and "use one of --list-specs, --stored" in err
