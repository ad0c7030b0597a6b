"""A run knows the profile it was priced from: a newer profile of the same model and workload
(``tuner profile --force``) makes the same request search again, through every way of asking."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

import tuner
from storage import Store
from tests.tuner_tests.conftest import tuned
from tuner.core.domain import ModelProfile
from tuner.core.domain import Workload
from tuner.plan.costmodel import PRICING_VERSION
from tuner.workflows import find_tuned_run
from tuner.workflows.request import TuningRequest
from tuner.workflows.request import profile_digest

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS: dict[str, object] = dict(seq=8, new_tokens=2, repeats=1, trials=4, random_seed=0)


def stored_profile_digest(model: Path, db: str) -> str:
    measured = tuner.profile(str(model), seq=8, new_tokens=2, repeats=1, db=db)
    return profile_digest(measured.profile)


def test_a_newer_profile_makes_optimize_search_again_and_the_run_names_it(
    config_folder: Callable[[str], Path], measured_db_url: str
) -> None:
    model = config_folder("llama")
    first = tuned(model, measured_db_url, **OPTIONS)
    assert not first.reused
    assert first.run.key.endswith("." + stored_profile_digest(model, measured_db_url))  # the profile it used
    again = tuned(model, measured_db_url, **OPTIONS)
    assert again.reused and again.run.id == first.run.id

    remeasured = tuner.profile(str(model), seq=8, new_tokens=2, repeats=1, force=True, db=measured_db_url)
    newer = tuned(model, measured_db_url, **OPTIONS)
    assert not newer.reused and newer.searched > 0 and newer.run.id != first.run.id
    assert newer.run.key.endswith("." + profile_digest(remeasured.profile))
    assert newer.run.key.partition(".")[0] == first.run.key.partition(".")[0]  # the same request
    assert tuned(model, measured_db_url, **OPTIONS).run.id == newer.run.id  # and that one is reused in turn


def test_the_fast_lookup_does_not_answer_with_a_run_priced_from_a_replaced_profile(
    config_folder: Callable[[str], Path], measured_db_url: str
) -> None:
    model = config_folder("llama")
    dmap = tuner.device_map(str(model), db=measured_db_url, **OPTIONS)  # type: ignore[arg-type]
    request = TuningRequest.from_arguments(str(model), seq=8, new_tokens=2)
    with Store(measured_db_url) as store:
        found = find_tuned_run(request, store)
    assert found is not None and found.winner is not None and found.winner.device_map.to_hf() == dmap
    tuner.profile(str(model), seq=8, new_tokens=2, repeats=1, force=True, db=measured_db_url)
    with Store(measured_db_url) as store:
        assert find_tuned_run(request, store) is None
    tuner.device_map(str(model), db=measured_db_url, **OPTIONS)  # type: ignore[arg-type]
    with Store(measured_db_url) as store:
        fresh = find_tuned_run(request, store)
    assert fresh is not None and fresh.id != found.id


def test_resuming_a_run_priced_from_a_replaced_profile_says_so(
    config_folder: Callable[[str], Path], measured_db_url: str
) -> None:
    model = config_folder("llama")
    first = tuned(model, measured_db_url, **OPTIONS)
    tuner.profile(str(model), seq=8, new_tokens=2, repeats=1, force=True, db=measured_db_url)
    with pytest.raises(
        tuner.TunerError, match=f"run {first.run.id} was priced from a profile .* measured again"
    ):
        tuned(model, measured_db_url, resume=first.run.id, **OPTIONS)


def test_a_plan_for_a_specs_machine_names_the_spec_it_was_priced_from(
    config_folder: Callable[[str], Path], measured_db_url: str, tmp_path: Path
) -> None:
    """The hardware's fingerprint names devices and sizes, not speeds: a spec whose figures were
    edited (a GPU ten times slower) is another plan, not the stored one with stale predictions."""
    model = config_folder("llama")
    spec = tmp_path / "a10g.json"
    hardware = tuner.read_spec("1xA10G-24GB")
    tuner.write_spec(hardware, spec)
    first = tuned(model, measured_db_url, hardware=str(spec), **OPTIONS)
    assert tuned(model, measured_db_url, hardware=str(spec), **OPTIONS).reused

    gpu = hardware.device("0")
    slower = replace(
        gpu,
        peak_flops={dtype: flops / 10 for dtype, flops in gpu.peak_flops.items()},
        memory_bandwidth=gpu.memory_bandwidth / 10,
    )
    edited = replace(hardware, devices=tuple(slower if d.key == "0" else d for d in hardware.devices))
    assert edited.fingerprint == hardware.fingerprint  # the same machine, by identity
    tuner.write_spec(edited, spec)
    again = tuned(model, measured_db_url, hardware=str(spec), **OPTIONS)
    assert not again.reused and again.run.id != first.run.id
    assert again.run.key.partition(".")[0] == first.run.key.partition(".")[0]  # the same request
    # accelerate's auto map runs on the GPU (a winner may run on the cpu: a tiny model pays less
    # per kernel there), so it is priced slower on the slower GPU
    auto, slowed = first.run.baseline("auto").prediction, again.run.baseline("auto").prediction
    assert auto is not None and slowed is not None
    assert slowed.latency_s > auto.latency_s
    edited_since = f"run {first.run.id} was priced from the spec's figures, edited since"
    with pytest.raises(tuner.TunerError, match=edited_since):
        tuned(model, measured_db_url, hardware=str(spec), resume=first.run.id, **OPTIONS)


def test_a_profile_stored_before_held_bytes_were_traced_gets_its_graph_traced_again(
    config_folder: Callable[[str], Path], measured_db_url: str
) -> None:
    model = str(config_folder("llama"))
    measured = tuner.profile(model, seq=8, new_tokens=2, repeats=1, db=measured_db_url)
    older = replace(
        measured.profile,
        graph=replace(
            measured.profile.graph,
            units=tuple(replace(u, held_bytes=None) for u in measured.profile.graph.units),
        ),
    )
    with Store(measured_db_url) as store:
        assert store.save_profile(older) == measured.profile_id

    again = tuner.profile(model, seq=8, new_tokens=2, repeats=1, db=measured_db_url)
    assert again.reused and again.profile_id == measured.profile_id
    assert again.profile.graph == measured.profile.graph  # held bytes back, as traced
    assert again.profile.units == measured.profile.units  # nothing measured again
    with Store(measured_db_url) as store:
        assert store.find_profile_id(*_key(again.profile)) == measured.profile_id
        stored = store.find_profile(*_key(again.profile))
    assert stored is not None and stored.graph == measured.profile.graph


def _key(profile: ModelProfile) -> tuple[str, str, Workload]:
    return profile.graph.fingerprint, profile.hardware_fingerprint, profile.workload


def test_a_run_priced_by_an_earlier_cost_model_is_not_reused(
    config_folder: Callable[[str], Path], measured_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tuner whose cost model prices maps otherwise (a newer version) searches again rather
    than answer with the stored run's stale prices, from optimize and from the fast lookup."""
    model = config_folder("llama")
    with monkeypatch.context() as earlier:
        earlier.setattr("tuner.workflows.request.PRICING_VERSION", PRICING_VERSION - 1)
        old = tuned(model, measured_db_url, **OPTIONS)
        assert tuned(model, measured_db_url, **OPTIONS).reused  # the same version reuses it
    request = TuningRequest.from_arguments(str(model), seq=8, new_tokens=2)
    with Store(measured_db_url) as store:
        assert find_tuned_run(request, store) is None
    new = tuned(model, measured_db_url, **OPTIONS)
    assert not new.reused and new.run.id != old.run.id
