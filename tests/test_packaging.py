"""The wheel users install carries what the packages read at run time and their type hints."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What a checkout holds beside its sources: environments, caches, earlier builds.
LEFT_OUT = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", ".demo", ".whl")


def test_the_wheel_carries_type_markers_and_data_files(tmp_path: Path) -> None:
    # built from a copy: setuptools' build/ folder would carry files since removed from the tree
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LEFT_OUT))
    wheel_args = [
        "wheel",
        str(source),
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path / "dist"),
    ]
    subprocess.run([sys.executable, "-m", "pip", *wheel_args], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # PEP 561: without the marker a user's mypy skips the package and every API call is Any
    assert {f"{package}/py.typed" for package in ("tuner", "profiler", "storage", "reports")} <= names
    assert {f"profiler/specs/{path.name}" for path in (ROOT / "profiler" / "specs").glob("*.json")} <= names
    assert "storage/migrations/env.py" in names and "storage/migrations/script.py.mako" in names
    assert any(name.startswith("reports/html/") and name.endswith(".css") for name in names)
