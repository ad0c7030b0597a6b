"""Pins and excluded devices bind the winner: accelerate's maps, planned without them, are priced
beside the others and marked with what they break, but never win a run that asked for them.

Planned for a shipped spec, so nothing is measured: the whole model fits its one GPU, where
accelerate's ``auto`` puts it, and that map is the fastest of all unless a pin or an exclusion
rules it out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

import tuner
from reports.terminal import run_tables
from tests.families import save_family

SPEC: dict[str, object] = dict(hardware="1xT4-16GB", seq=8, new_tokens=2, trials=6, random_seed=0)


@pytest.fixture
def model(config_folder: Callable[[str], Path]) -> str:
    return str(config_folder("llama"))


def test_without_constraints_accelerates_auto_is_the_fastest_map(model: str, tmp_path: Path) -> None:
    run = tuner.optimize(model, db=f"sqlite:///{tmp_path / 'tuner.db'}", **SPEC)  # type: ignore[arg-type]
    auto = next(c for c in run.baselines if c.name == "auto")
    assert set(auto.device_map.devices) == {"0"} and not auto.breaks
    assert run.winner is not None and run.winner.prediction is not None and auto.prediction is not None
    assert run.winner.prediction.latency_s == pytest.approx(auto.prediction.latency_s)


@pytest.mark.parametrize(
    ("constraints", "broken"),
    [
        (dict(pins={"lm_head": "cpu"}), "pin lm_head=cpu"),
        (dict(exclude=["0"]), "excluded 0"),
    ],
)
def test_a_map_that_breaks_the_pins_or_exclusions_never_wins(
    model: str, tmp_path: Path, constraints: dict[str, object], broken: str
) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    run = tuner.optimize(model, db=db, **constraints, **SPEC)  # type: ignore[arg-type]
    auto = next(c for c in run.baselines if c.name == "auto")
    assert auto.breaks == broken and not auto.feasible
    assert auto.prediction is not None and auto.prediction.feasible  # it fits: only the pins rule it out
    winner = run.winner
    assert winner is not None and winner.prediction is not None and not winner.breaks
    assert winner.prediction.latency_s > auto.prediction.latency_s
    placements = dict(winner.device_map.placements)
    if "pins" in constraints:
        assert placements["lm_head"] == "cpu"
    else:
        assert "0" not in placements.values()
    # stored as it was priced: the same request is answered from the database with the same winner
    again = tuner.device_map(model, db=db, **constraints, **SPEC)  # type: ignore[arg-type]
    assert again == winner.device_map.to_hf()
    console = Console(width=250, record=True)
    with tuner.open_database(db) as store:
        console.print(*run_tables(store.get_run(run.id)))
    assert f"auto (breaks {broken})" in console.export_text()


def test_a_pin_on_a_module_pins_every_unit_inside_it_and_a_deeper_pin_wins(
    model: str, tmp_path: Path
) -> None:
    pins = {"model.layers": "cpu", "model.layers.1": "0"}
    run = tuner.optimize(model, db=f"sqlite:///{tmp_path / 'tuner.db'}", pins=pins, **SPEC)  # type: ignore[arg-type]
    assert run.winner is not None and run.pins == tuple(sorted(pins.items()))
    layers = {u: p for u, p in run.winner.device_map.placements if u.startswith("model.layers.")}
    assert layers and all(p == ("0" if u.startswith("model.layers.1") else "cpu") for u, p in layers.items())


@pytest.mark.parametrize(
    ("pin", "message"),
    [
        ("model.layers.0.mlp", "pins: 'model.layers.0.mlp' is inside unit 'model.layers.0'"),
        ("decoder", "pins: the model has no unit or module 'decoder'; its top-level modules: lm_head, model"),
    ],
)
def test_a_pin_on_part_of_a_unit_or_on_nothing_is_refused(
    model: str, tmp_path: Path, pin: str, message: str
) -> None:
    with pytest.raises(tuner.ConstraintError) as refused:
        tuner.optimize(model, db=f"sqlite:///{tmp_path / 'tuner.db'}", pins={pin: "cpu"}, **SPEC)  # type: ignore[arg-type]
    assert str(refused.value).startswith(message)
    assert not (tmp_path / "tuner.db").exists()


def test_the_unit_a_models_own_generate_reads_stays_on_the_lowest_gpu_not_excluded(tmp_path: Path) -> None:
    # Whisper's generate reads model.device (its first weight's): that unit stays resident, on
    # the main device; with GPU 0 excluded the main device is GPU 1, and a map there fits
    folder = str(save_family("whisper", tmp_path / "whisper", weights=False))
    options: dict[str, object] = dict(hardware="rtx3090-rtx3060-pcie", new_tokens=2, trials=2)
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    both = tuner.optimize(folder, db=db, **options)  # type: ignore[arg-type]
    assert both.winner is not None and both.winner.device_map.placement("model.encoder.conv1") == "0"
    one = tuner.optimize(folder, exclude=["0"], db=db, **options)  # type: ignore[arg-type]
    assert one.winner is not None and one.winner.device_map.placement("model.encoder.conv1") == "1"
