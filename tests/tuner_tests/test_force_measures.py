"""``optimize --force`` measures afresh: this machine's speeds and the model's profile are taken
again, not read back from the database (where one taken on a busy machine would stay forever)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from storage import Store
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
