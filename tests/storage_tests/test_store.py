"""The Store contract, run against a SQLite file and a PostgreSQL database."""

from __future__ import annotations

import dataclasses
import doctest
import subprocess
import sys

import pytest
import sqlalchemy

import storage.store
from storage import Store
from tuner.core.domain import HardwareProfile
from tuner.core.domain import ModelProfile
from tuner.core.domain import Workload
from tuner.core.exceptions import StorageError


def _row_counts(url: str) -> dict[str, int]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return {
                table: connection.execute(sqlalchemy.text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("models", "hardware", "profiles", "unit_profiles")
            }
    finally:
        engine.dispose()


def test_model_profile_round_trip(store: Store, model_profile: ModelProfile) -> None:
    store.save_profile(model_profile)
    found = store.find_profile(
        model_profile.graph.fingerprint, model_profile.hardware_fingerprint, model_profile.workload
    )
    assert found == model_profile
    assert found is not None and found.units == model_profile.units  # order kept


def test_hardware_round_trip_and_replacement(store: Store, hardware: HardwareProfile) -> None:
    store.save_hardware(hardware)
    assert store.find_hardware(hardware.fingerprint) == hardware

    # Speeds are not part of the fingerprint: a new measurement replaces the old one.
    faster = dataclasses.replace(hardware, links=hardware.links[:1], source="spec")
    assert faster.fingerprint == hardware.fingerprint
    store.save_hardware(faster)
    assert store.find_hardware(hardware.fingerprint) == faster


def test_find_returns_none_when_absent(store: Store, model_profile: ModelProfile) -> None:
    graph, hardware_fp = model_profile.graph.fingerprint, model_profile.hardware_fingerprint
    assert store.find_profile(graph, hardware_fp, model_profile.workload) is None
    assert store.find_hardware(hardware_fp) is None
    store.save_profile(model_profile)
    assert store.find_profile(graph, "0" * 16, model_profile.workload) is None
    assert store.find_profile("0" * 16, hardware_fp, model_profile.workload) is None
    # The profile names its machine by fingerprint only; that is not a stored hardware profile.
    assert store.find_hardware(hardware_fp) is None


def test_same_key_replaces_the_profile(db_url: str, store: Store, model_profile: ModelProfile) -> None:
    first_id = store.save_profile(model_profile)
    remeasured = dataclasses.replace(model_profile, units=model_profile.units[::2], full=False, seconds=3.5)
    assert store.save_profile(remeasured) == first_id
    assert store.count_profiles() == 1
    found = store.find_profile(
        model_profile.graph.fingerprint, model_profile.hardware_fingerprint, model_profile.workload
    )
    assert found == remeasured
    assert _row_counts(db_url)["unit_profiles"] == len(remeasured.units)


def test_a_different_workload_is_a_different_profile(store: Store, model_profile: ModelProfile) -> None:
    longer = dataclasses.replace(model_profile, workload=Workload(batch=2, seq=128, new_tokens=8))
    first_id = store.save_profile(model_profile)
    assert store.save_profile(longer) != first_id
    assert store.count_profiles() == 2
    keys = (model_profile.graph.fingerprint, model_profile.hardware_fingerprint)
    assert store.find_profile(*keys, model_profile.workload) == model_profile
    assert store.find_profile(*keys, longer.workload) == longer
    assert store.find_profile(*keys, Workload(batch=2, seq=64, new_tokens=8, dtype="float16")) is None


def test_profile_and_hardware_share_the_machine_row(
    db_url: str, store: Store, model_profile: ModelProfile, hardware: HardwareProfile
) -> None:
    store.save_profile(model_profile)
    store.save_hardware(hardware)
    assert store.find_hardware(hardware.fingerprint) == hardware
    assert _row_counts(db_url)["hardware"] == 1
    assert (
        store.find_profile(model_profile.graph.fingerprint, hardware.fingerprint, model_profile.workload)
        == model_profile
    )


def test_a_failed_save_leaves_the_database_as_it_was(
    db_url: str, store: Store, model_profile: ModelProfile
) -> None:
    store.save_profile(model_profile)
    before = _row_counts(db_url)
    # Two measurements of one (unit, device, phase): the unit rows fail after the model, hardware
    # and profile rows were already written in the same transaction.
    ambiguous = model_profile.units + model_profile.units[:1]
    new_model = dataclasses.replace(
        model_profile,
        graph=dataclasses.replace(model_profile.graph, fingerprint="another-model"),
        hardware_fingerprint="another-machine",
        units=ambiguous,
    )
    replacing = dataclasses.replace(model_profile, units=ambiguous, seconds=1.0)

    for broken in (new_model, replacing):
        with pytest.raises(StorageError, match=r"^database .*: .*(UNIQUE|unique)") as raised:
            store.save_profile(broken)
        assert "\n" not in str(raised.value)
        assert _row_counts(db_url) == before
    assert (
        store.find_profile(
            model_profile.graph.fingerprint, model_profile.hardware_fingerprint, model_profile.workload
        )
        == model_profile
    )


def test_profiles_persist_across_stores(db_url: str, model_profile: ModelProfile) -> None:
    with Store(db_url) as store:
        store.save_profile(model_profile)
    with Store(db_url) as store:
        assert store.count_profiles() == 1
        assert (
            store.find_profile(
                model_profile.graph.fingerprint, model_profile.hardware_fingerprint, model_profile.workload
            )
            == model_profile
        )


def test_docstring_example_runs() -> None:
    assert doctest.testmod(storage.store).failed == 0


def test_storage_never_imports_torch() -> None:
    code = "import sys, storage, storage.store, tuner.core.codec; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_profile_id_is_found_by_key(store: Store, model_profile: ModelProfile) -> None:
    keys = (model_profile.graph.fingerprint, model_profile.hardware_fingerprint, model_profile.workload)
    assert store.find_profile_id(*keys) is None
    saved = store.save_profile(model_profile)
    assert store.find_profile_id(*keys) == saved
