"""Learning from measurement: measured over predicted per phase, kept with each map timed on the
machine it was planned for, and ``optimize --calibrate`` pricing with the median of those ratios."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

import tuner
from storage import Store
from tests.tuner_tests.conftest import Notes
from tests.tuner_tests.conftest import run
from tests.tuner_tests.conftest import tuned
from tests.tuner_tests.plan_tests.test_costmodel import two_gpu_machine
from tests.tuner_tests.plan_tests.test_costmodel import two_unit_model
from tuner.core.domain import Calibration
from tuner.core.domain import Candidate
from tuner.core.domain import DeviceMap
from tuner.core.domain import PhaseCost
from tuner.core.domain import Prediction
from tuner.core.exceptions import ConstraintError
from tuner.plan.costmodel import CostModel

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS: dict[str, object] = dict(seq=8, new_tokens=3, repeats=1, trials=4, random_seed=0)


# ---- the arithmetic, by hand --------------------------------------------------------------------


def test_the_factors_are_the_median_ratio_of_each_phase() -> None:
    # prefill ratios 1.5, 1.25, 2.0 -> 1.5; decode ratios 2.0, 3.0 (one map generated one token) -> 2.5
    assert Calibration.from_ratios([(1.5, 2.0), (1.25, None), (2.0, 3.0)]) == Calibration(1.5, 2.5, 3)
    assert Calibration.from_ratios([(0.8, None)]) == Calibration(0.8, 1.0, 1)
    assert Calibration.from_ratios([(None, 2.0)]) is None
    assert Calibration.from_ratios([]) is None


@pytest.mark.parametrize("factor", [0.0, -1.0, float("inf"), float("nan")])
def test_a_factor_is_positive_and_finite(factor: float) -> None:
    with pytest.raises(ValueError, match="factor must be positive"):
        Calibration(factor, 1.0, 1)


def test_ratios_are_taken_against_the_model_s_own_figures_even_when_it_was_calibrated() -> None:
    # predicted 0.4 s prefill and 0.04 s a step after factors 2 and 4: the model said 0.2 and 0.01
    prediction = Prediction(PhaseCost(0.3, 0.1, 0.0), PhaseCost(0.04, 0, 0), 3, (), Calibration(2.0, 4.0, 5))
    assert prediction.modelled_s == pytest.approx((0.2, 0.01))
    measured = Candidate(
        "auto", DeviceMap((("lm_head", "cpu"),)), prediction, measured_prefill_s=0.3, measured_decode_s=0.02
    )
    assert measured.phase_ratios == pytest.approx((1.5, 2.0))
    assert dataclasses.replace(measured, measured_decode_s=None).phase_ratios[1] is None


def test_a_calibrated_cost_model_multiplies_each_phase_by_its_factor() -> None:
    # both units on GPU 0: prefill 10 + 5 ms, a decode step 2 + 1 ms, nothing streamed or moved;
    # x2 and x0.5: prefill 30 ms, steps 1.5 ms, 5 tokens = prefill + 4 steps = 36 ms
    graph, profiles, workload = two_unit_model(new_tokens=5)
    calibration = Calibration(2.0, 0.5, 3)
    model = CostModel(graph, profiles, two_gpu_machine(), workload, calibration=calibration)
    predicted = model.predict(DeviceMap((("a", "0"), ("b", "0"))))
    assert predicted.prefill.total_s == pytest.approx(0.030)
    assert predicted.decode.total_s == pytest.approx(0.0015)
    assert predicted.latency_s == pytest.approx(0.036)
    assert predicted.calibration == calibration and predicted.modelled_s == pytest.approx((0.015, 0.003))


# ---- what measuring stores and what --calibrate does with it -------------------------------------


def record(db: str, run_id: int, *measured: Candidate) -> None:
    with Store(db) as store:
        found = store.get_run(run_id)
        store.record_measurements(run_id, list(measured), winner=None, phase_seconds=found.phase_seconds)


def test_optimize_calibrates_with_quiet_measurements_of_this_machine_only(
    config_folder: Callable[[str], Path], measured_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = config_folder("llama")
    nothing = Notes()
    first = tuned(model, measured_db_url, listener=nothing, calibrate=True, **OPTIONS).run
    assert any(
        note.startswith("nothing to calibrate with: no map was timed on this machine")
        for note in nothing.notes
    )
    assert first.winner is not None and first.winner.prediction is not None
    assert first.winner.prediction.calibration is None

    plain = tuned(model, measured_db_url, **OPTIONS).run  # another request: not calibrated
    assert plain.id != first.id and plain.winner is not None and plain.winner.prediction is not None
    prefill, step = plain.winner.prediction.modelled_s
    # the winner took twice its prefill and three times its decode step, on a quiet machine
    record(
        measured_db_url,
        plain.id,
        dataclasses.replace(
            plain.winner, measured_s=1.0, measured_prefill_s=2 * prefill, measured_decode_s=3 * step
        ),
    )
    # ten times, but timed while others loaded the machine: left out
    record(
        measured_db_url,
        first.id,
        dataclasses.replace(
            first.winner,
            measured_s=1.0,
            measured_prefill_s=10 * prefill,
            measured_decode_s=10 * step,
            measure_busy="other processes used 1.8 of 2 cpus (90%) while measuring",
        ),
    )
    notes = Notes()
    calibrated = tuned(model, measured_db_url, listener=notes, calibrate=True, **{**OPTIONS, "seq": 10}).run
    assert calibrated.winner is not None and calibrated.winner.prediction is not None
    found = calibrated.winner.prediction.calibration
    assert found is not None and found.maps == 1
    assert (found.prefill, found.decode) == pytest.approx((2.0, 3.0))
    assert (
        "calibrated with 1 maps timed on this machine: predicted prefill x2.00, decode step x3.00 "
        "(measured over predicted, median)"
    ) in notes.notes
    prediction = calibrated.winner.prediction
    assert prediction.prefill.total_s == pytest.approx(2 * prediction.modelled_s[0])
    assert prediction.decode.total_s == pytest.approx(3 * prediction.modelled_s[1])

    code, out, _ = run(["show", str(calibrated.id), "--db", measured_db_url], capsys)
    assert code == 0 and "calibrated: predicted prefill x2.00, decode step x3.00" in " ".join(out.split())
    code, out, _ = run(["show", str(plain.id), "--db", measured_db_url], capsys)
    assert code == 0 and "over predicted: prefill 2.00x, step 3.00x" in " ".join(out.split())
    code, out, _ = run(["show", str(first.id), "--db", measured_db_url], capsys)
    assert code == 0 and "busy" in out


def test_calibrating_a_plan_for_a_spec_is_refused_in_one_line(
    config_folder: Callable[[str], Path], measured_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(config_folder("llama"))
    with pytest.raises(ConstraintError, match="calibrate learns from maps measured on this machine"):
        tuner.optimize(model, hardware="2xA100-80GB-nvlink", calibrate=True, db=measured_db_url)
    code, _, err = run(
        ["optimize", model, "--hardware", "2xA100-80GB-nvlink", "--calibrate", "--db", measured_db_url],
        capsys,
    )
    assert code != 0 and len(err.strip().splitlines()) == 1 and "calibrate" in err


def test_validate_keeps_each_phase_of_a_run_planned_here(
    weights_folder: Callable[[str], Path], measured_db_url: str
) -> None:
    model = weights_folder("llama")
    found = tuned(model, measured_db_url, **OPTIONS).run
    outcome = tuner.validate(str(model), run=found.id, repeats=2, db=measured_db_url)
    assert outcome.validation.ok
    stored = tuner.get_run(found.id, db=measured_db_url).winner
    assert stored is not None and stored.prediction is not None
    result = outcome.validation
    assert (stored.measured_s, stored.measured_prefill_s, stored.measured_decode_s) == (
        result.latency_s,
        result.prefill_s,
        result.decode_s,
    )
    assert stored.measure_busy == outcome.busy
    assert result.prefill_s is not None and result.decode_s is not None
    assert outcome.ratios == pytest.approx(
        (
            result.prefill_s / stored.prediction.prefill.total_s,
            result.decode_s / stored.prediction.decode.total_s,
        )
    )


def test_a_busy_validation_does_not_replace_a_quiet_measurement(
    weights_folder: Callable[[str], Path], measured_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`LoadWatch` subclasses stand for the machine's state while each validation runs."""
    import profiler.hardware

    class Quiet(profiler.hardware.LoadWatch):
        def __exit__(self, *exc: object) -> None:
            super().__exit__(*exc)  # type: ignore[arg-type]
            self.busy = ""

    class Busy(profiler.hardware.LoadWatch):
        def __exit__(self, *exc: object) -> None:
            super().__exit__(*exc)  # type: ignore[arg-type]
            self.busy = "other processes used 1.9 of 2 cpus (95%) while measuring"

    model = weights_folder("llama")
    found = tuned(model, measured_db_url, **OPTIONS).run
    monkeypatch.setattr(profiler.hardware, "LoadWatch", Quiet)
    quiet = tuner.validate(str(model), run=found.id, repeats=1, db=measured_db_url)
    assert quiet.kept_quiet is None
    monkeypatch.setattr(profiler.hardware, "LoadWatch", Busy)
    busy = tuner.validate(str(model), run=found.id, repeats=1, db=measured_db_url)
    assert busy.validation.ok and busy.busy and busy.kept_quiet == quiet.validation.latency_s
    stored = tuner.get_run(found.id, db=measured_db_url).winner
    assert stored is not None and stored.measure_busy == ""
    assert stored.measured_s == quiet.validation.latency_s != busy.validation.latency_s

    monkeypatch.setattr(profiler.hardware, "LoadWatch", Quiet)  # a quiet one replaces a quiet one
    again = tuner.validate(str(model), run=found.id, repeats=1, db=measured_db_url)
    stored = tuner.get_run(found.id, db=measured_db_url).winner
    assert stored is not None and stored.measured_s == again.validation.latency_s
