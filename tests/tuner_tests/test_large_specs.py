"""A spec with more GPUs than one machine has is refused in one line, before anything loads."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import tuner
from profiler.spec import SPECS_DIR
from tuner.workflows.request import MAX_ACCELERATORS


def spec_with(gpus: int, folder: Path) -> Path:
    """The shipped 8xH100 spec with `gpus` H100s."""
    document = json.loads((SPECS_DIR / "8xH100-80GB-nvlink.json").read_text())
    cpu, gpu, disk = (next(d for d in document["devices"] if d["key"] == key) for key in ("cpu", "0", "disk"))
    document["devices"] = [cpu, *({**gpu, "key": str(k)} for k in range(gpus)), disk]
    path = folder / f"{gpus}xH100.json"
    path.write_text(json.dumps(document))
    return path


def test_more_gpus_than_a_machine_has_are_refused(
    tmp_path: Path, config_folder: Callable[[str], Path]
) -> None:
    spec = spec_with(MAX_ACCELERATORS + 1, tmp_path)
    with pytest.raises(
        tuner.TunerError, match=rf"^hardware {spec}: 65 GPUs, and the tuner plans for at most 64"
    ):
        tuner.optimize(str(config_folder("llama")), hardware=str(spec), db=f"sqlite:///{tmp_path}/t.db")
    assert not (tmp_path / "t.db").exists()


def test_the_command_says_so_in_one_line_before_loading_torch(
    tmp_path: Path, config_folder: Callable[[str], Path]
) -> None:
    spec = spec_with(200, tmp_path)
    code = (
        "import sys; from tuner.cli import main; sys.argv = ['tuner', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as stop:\n"
        "    print('torch' in sys.modules, stop.code, file=sys.stderr)"
    )
    model = str(config_folder("llama"))
    arguments = ["optimize", model, "--hardware", str(spec), "--db", f"sqlite:///{tmp_path}/t.db"]
    result = subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: hardware {spec}: 200 GPUs, and the tuner plans for at most 64")
    assert lines[1:] == ["False 1"]
