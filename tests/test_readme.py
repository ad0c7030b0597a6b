"""The README's examples run as written: its "From Python" section is executed, in a fresh process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of one ``## `` section of the README."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end != -1 else None], flags=re.S)


def test_the_from_python_section_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    (code,) = python_blocks("From Python")
    # Its temporary folder goes under the test's; TUNER_DB keeps the last call (no db given) off the
    # user's database, as the README says that call fails before touching any.
    env = {**os.environ, "TMPDIR": str(tmp_path), "TUNER_DB": f"sqlite:///{tmp_path / 'untouched.db'}"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r".+ [\d.]+ ms predicted, feasible: True", lines[0])
    assert re.fullmatch(r"auto [\d.]+ ms predicted, feasible: (True|False)", lines[1])
    assert re.fullmatch(r"your map: [\d.]+ ms, fits: (True|False)", lines[2])
    assert lines[3] == "max_memory['cpu']: a size must not be negative (got '-1GiB')"
    assert not (tmp_path / "untouched.db").exists()


def test_the_spec_file_example_reads_as_the_tuner_reads_specs(tmp_path: Path) -> None:
    from profiler.spec import load_spec

    (block,) = re.findall(r"```json\n(\{\n  \"name\".*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    spec = tmp_path / "desktop.json"
    spec.write_text(block)
    hardware = load_spec(spec)
    assert [device.key for device in hardware.devices] == ["cpu", "0", "disk"]
    assert {(link.src, link.dst) for link in hardware.pageable} == {("cpu", "0"), ("0", "cpu")}
