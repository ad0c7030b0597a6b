"""``optimize --force`` measures afresh: this machine's speeds and the model's profile are taken
again, not read back from the database (where one taken on a busy machine would stay forever)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from storage import Store
from tests.tuner_tests.conftest import Notes
from tests.tuner_tests.conftest import tuned
from tuner.core.codec import to_dict
from tuner.core.domain import HardwareProfile
from tuner.core.domain import ModelProfile

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS: dict[str, object] = dict(seq=8, new_tokens=2, repeats=1, trials=4, random_seed=0)


def stored(db: str, fingerprint: str) -> tuple[HardwareProfile, ModelProfile]:
    with Store(db) as store:
        run = store.latest_run()
        assert run is not None
        hardware = store.find_hardware(fingerprint)
        profile = store.find_profile(run.model_fingerprint, run.hardware_fingerprint, run.workload)
    assert hardware is not None and profile is not None
    return hardware, profile


def test_force_measures_the_machine_and_the_model_again(
    config_folder: Callable[[str], Path], measured_db_url: str
) -> None:
    model = config_folder("llama")
    first = tuned(model, measured_db_url, **OPTIONS)
    hardware, profile = stored(measured_db_url, first.run.hardware_fingerprint)
    assert tuned(model, measured_db_url, **OPTIONS).reused  # the same request: nothing measured
    assert stored(measured_db_url, first.run.hardware_fingerprint) == (hardware, profile)

    forced = tuned(model, measured_db_url, force=True, **OPTIONS)
    assert not forced.reused and forced.run.id != first.run.id
    hardware_again, profile_again = stored(measured_db_url, first.run.hardware_fingerprint)
    # timings never repeat to the last bit: equal figures would mean they were read back
    assert to_dict(hardware_again) != to_dict(hardware)
    assert [u.time_s for u in profile_again.units] != [u.time_s for u in profile.units]


def test_a_run_reused_from_a_profile_stored_as_busy_says_so(
    config_folder: Callable[[str], Path], measured_db_url: str
) -> None:
    """A busy profile was 10-100x off here; the run priced from it answered again in silence."""
    model = config_folder("llama")
    first = tuned(model, measured_db_url, **OPTIONS)
    _, profile = stored(measured_db_url, first.run.hardware_fingerprint)
    flag = "other processes used 1.0 of 2 cpus (50%)"
    with Store(measured_db_url) as store:  # as if taken under load
        store.save_profile(replace(profile, busy=flag))
    busy = tuned(model, measured_db_url, **OPTIONS)  # another profile (its flag) is another run
    assert not busy.reused and busy.run.id != first.run.id

    notes = Notes()
    again = tuned(model, measured_db_url, notes, **OPTIONS)
    assert again.reused and again.run.id == busy.run.id
    assert notes.notes == [
        f"run {busy.run.id} was priced from a profile measured while the machine was busy ({flag}): its "
        "times may be many times this machine's; --force measures again"
    ]


def test_a_run_reused_for_more_trials_than_it_searched_says_so(
    config_folder: Callable[[str], Path], measured_db_url: str
) -> None:
    """The same request with more trials answers from the stored run: said, not silently ignored."""
    model = config_folder("llama")
    first = tuned(model, measured_db_url, **OPTIONS)
    notes = Notes()
    more = tuned(model, measured_db_url, notes, **{**OPTIONS, "trials": 40})
    assert more.reused and more.run.id == first.run.id and more.run.trials == first.run.trials
    said = [note for note in notes.notes if "trials" in note]  # a busy profile's note may come too
    assert said == [
        f"run {first.run.id} answers with the {first.run.trials} trials it searched (40 asked now); "
        "--force searches again"
    ]
    for settings in (OPTIONS, {**OPTIONS, "trials": 40, "timeout": 600}):  # a time limit may cut trials
        notes = Notes()
        assert tuned(model, measured_db_url, notes, **settings).reused
        assert not [note for note in notes.notes if "trials" in note]
