"""A map file from `tuner export` goes to ``from_pretrained`` through `tuner.read_map`: JSON writes
a GPU's limit under the key ``"0"``, which accelerate refuses; read_map gives it back as ``0``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from accelerate.utils import get_max_memory
from transformers import AutoModelForCausalLM

import tuner
from tests.tuner_tests.conftest import run


def test_an_export_with_its_limits_reads_back_as_accelerate_takes_them(
    config_folder: Callable[[str], Path], db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = config_folder("llama")
    options = ["--hardware", "rtx3090-rtx3060-pcie", "--max-memory", "0=1MiB,1=1GiB,cpu=1GiB", "--seq", "8"]
    options += ["--new-tokens", "2", "--trials", "2"]
    assert run(["optimize", str(folder), *options, "--db", db_url], capsys)[0] == 0
    exported = tmp_path / "map.json"
    assert run(["export", "latest", "--with-max-memory", "-o", str(exported), "--db", db_url], capsys)[0] == 0
    written = json.loads(exported.read_text())
    with pytest.raises(ValueError, match="Device [01] is not recognized"):
        get_max_memory(written["max_memory"])  # as json.load gives it

    arguments = tuner.read_map(exported)
    assert arguments["device_map"] == written["device_map"]
    limits = arguments["max_memory"]
    assert set(limits) == {0, 1, "cpu"}  # GPUs as ints
    assert {str(key): value for key, value in limits.items()} == written["max_memory"]
    assert get_max_memory(limits) == limits
    assert arguments["dtype"] == written["dtype"] == "float32"  # the dtype the run priced

    bare = tmp_path / "bare.json"
    assert run(["export", "latest", "-o", str(bare), "--db", db_url], capsys)[0] == 0
    assert tuner.read_map(bare) == {"device_map": written["device_map"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "is not valid JSON"),
        ('{"a": 0, "a": 1}', "the key 'a' appears twice"),
        (
            '{"device_map": {"": "cpu"}, "max_memory": {"gpu0": 5}}',
            "max_memory['gpu0']: 'gpu0' is not a device",
        ),
        ('{"device_map": {"": "cpu"}, "max_memory": [5]}', "max_memory must be an object of device -> bytes"),
        ('{"": "tpu"}', "['']: 'tpu' is not a device"),
        (
            '{"device_map": {"": 0}, "max_memory": {"0": "1GiB", "cuda:0": "2GiB"}}',
            "device '0' is given twice",
        ),
        ('{"device_map": {"": 0}, "max_memory": {"cpu": "lots"}}', "max_memory['cpu']"),
        ('{"device_map": {"": 0}, "dtype": "int4"}', "dtype must be one of float32, float16, bfloat16"),
        ('{"device_map": {"": 0}, "dtype": ["bfloat16"]}', "dtype must be one of float32, float16"),
        ("{}", 'holds an empty device map: place the whole model at least ({"": "cpu"})'),
        ('{"device_map": {}, "dtype": "float16"}', "holds an empty device map"),
    ],
)
def test_a_file_that_holds_no_map_is_one_line_naming_it(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(text)
    with pytest.raises(tuner.TunerError) as refused:
        tuner.read_map(path)
    assert message in str(refused.value) and str(path) in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_model_loaded_with_its_exported_arguments_is_in_the_dtype_the_run_planned(
    weights_folder: Callable[[str], Path],
    measured_db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A float32 checkpoint tuned in bfloat16: loaded with the map and limits alone, it came in
    float32, twice the bytes the limits were planned for."""
    folder = weights_folder("llama")
    options = ["--dtype", "bfloat16", "--seq", "8", "--new-tokens", "2", "--trials", "2", "--repeats", "1"]
    assert run(["optimize", str(folder), *options, "--db", measured_db_url], capsys)[0] == 0
    exported = tmp_path / "planned.json"
    code, _, err = run(
        ["export", "latest", "--with-max-memory", "-o", str(exported), "--db", measured_db_url], capsys
    )
    assert code == 0, err
    model = AutoModelForCausalLM.from_pretrained(folder, **tuner.read_map(exported))
    assert model.dtype == torch.bfloat16


def test_a_hand_written_map_reads_back_as_accelerate_takes_it(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text('{"device_map": {"model.layers": "cuda:1", "": "CPU"}, "max_memory": {"1": "2GiB"}}')
    assert tuner.read_map(path) == {"device_map": {"model.layers": 1, "": "cpu"}, "max_memory": {1: 2**31}}
