"""``dtype="auto"`` from the request to the stored run: the dtype from_pretrained loads without
one, resolved once, planned, said in the output, and loaded again by validate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import tuner
from tests.checkpoints import bf16_folder  # noqa: F401 - a fixture
from tests.tuner_tests.conftest import run
from tests.tuner_tests.conftest import tuned
from tuner.core.domain import AUTO_DTYPE
from tuner.core.domain import Run
from tuner.workflows.request import TuningRequest
from tuner.workflows.request import prepare

pytestmark = pytest.mark.usefixtures("one_thread")

#: A spec's machine: estimates from FLOPs, the same in every run, so two plans compare exactly.
SPEC: dict[str, Any] = dict(hardware="1xA10G-24GB", seq=16, new_tokens=4, trials=8, random_seed=0)


def planned(folder: Path, db: Path, **options: Any) -> Run:
    return tuner.optimize(str(folder), db=f"sqlite:///{db}", **SPEC, **options)


def test_requests_default_to_auto_and_resolve_it_in_the_workload(bf16_folder: Path) -> None:  # noqa: F811
    default = TuningRequest.from_arguments(str(bf16_folder))
    assert default.dtype == AUTO_DTYPE
    prepared = prepare(default)
    assert prepared.workload.dtype == "bfloat16"
    assert prepared.key == prepare(TuningRequest.from_arguments(str(bf16_folder), dtype="bfloat16")).key
    assert prepared.key != prepare(TuningRequest.from_arguments(str(bf16_folder), dtype="float32")).key
    with pytest.raises(tuner.WorkloadError, match="dtype: unknown 'half'"):
        TuningRequest.from_arguments(str(bf16_folder), dtype="half")


def test_a_bf16_checkpoints_default_plan_equals_its_bfloat16_plan(bf16_folder: Path, tmp_path: Path) -> None:  # noqa: F811
    default = planned(bf16_folder, tmp_path / "a.db")
    asked = planned(bf16_folder, tmp_path / "b.db", dtype="bfloat16")
    assert default.workload == asked.workload and default.workload.dtype == "bfloat16"
    assert default.key == asked.key
    assert default.winner is not None and asked.winner is not None
    assert default.winner.device_map == asked.winner.device_map
    assert default.winner.prediction == asked.winner.prediction
    assert [(c.name, c.device_map, c.prediction) for c in default.baselines] == [
        (c.name, c.device_map, c.prediction) for c in asked.baselines
    ]
    in_float32 = planned(bf16_folder, tmp_path / "c.db", dtype="float32")
    assert in_float32.winner is not None and in_float32.winner.prediction is not None
    # float32 weights take twice the room (the float32 rotary buffer aside)
    (half,) = (m.weights for m in default.winner.prediction.memory)
    (full,) = (m.weights for m in in_float32.winner.prediction.memory)
    assert 1.99 < full / half <= 2


def test_on_this_machine_auto_and_bfloat16_are_one_run(bf16_folder: Path, measured_db_url: str) -> None:  # noqa: F811
    options = dict(seq=8, new_tokens=2, repeats=1, trials=5, random_seed=0)
    first = tuned(bf16_folder, measured_db_url, **options)
    again = tuned(bf16_folder, measured_db_url, dtype="bfloat16", **options)
    assert first.run.workload.dtype == "bfloat16"
    assert again.reused and again.run.id == first.run.id


def test_the_command_line_says_which_dtype_and_validate_loads_it(
    bf16_folder: Path,  # noqa: F811
    measured_db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--seq", "8", "--new-tokens", "2", "--db", measured_db_url]
    code, out, err = run(
        ["optimize", str(bf16_folder), "--hardware", SPEC["hardware"], "--trials", "5", *args], capsys
    )
    assert code == 0, err
    assert "dtype bfloat16 (auto: what from_pretrained loads without one" in out
    code, out, err = run(["profile", str(bf16_folder), "--dtype", "float16", "--repeats", "1", *args], capsys)
    assert code == 0, err
    assert "dtype float16 (asked)" in out
    mapping = tmp_path / "map.json"
    units = prepare(TuningRequest.from_arguments(str(bf16_folder))).meta.unit_names
    mapping.write_text(json.dumps(dict.fromkeys(units, "cpu")))
    code, out, err = run(["validate", str(mapping), str(bf16_folder), "--seq", "8", "--repeats", "1"], capsys)
    assert code == 0, err
    assert "loaded in bfloat16, run with batch 1, seq 8, 0 new tokens" in out  # a map file names no workload
    outcome = tuner.validate(str(bf16_folder), device_map={"": "cpu"}, seq=8, repeats=1)
    assert outcome.workload is not None and outcome.workload.dtype == "bfloat16"
    assert outcome.validation.ok, outcome.validation.reason
