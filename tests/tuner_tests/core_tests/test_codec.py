from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest

from tuner.core.codec import candidate_from_dict
from tuner.core.codec import device_map_from_dict
from tuner.core.codec import graph_from_dict
from tuner.core.codec import hardware_from_dict
from tuner.core.codec import model_profile_from_dict
from tuner.core.codec import prediction_from_dict
from tuner.core.codec import run_from_dict
from tuner.core.codec import to_dict
from tuner.core.codec import unit_profile_from_dict
from tuner.core.codec import workload_from_dict
from tuner.core.domain import Candidate
from tuner.core.domain import Edge
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import ModelGraph
from tuner.core.domain import ModelProfile
from tuner.core.domain import Phase
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.domain import Unit
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload


def _through_json(obj: Any) -> Any:
    return json.loads(json.dumps(to_dict(obj)))


@pytest.mark.parametrize(
    ("fixture", "from_dict"),
    [
        pytest.param("workload", workload_from_dict, id="Workload"),
        pytest.param("graph", graph_from_dict, id="ModelGraph"),
        pytest.param("hardware", hardware_from_dict, id="HardwareProfile"),
        pytest.param("model_profile", model_profile_from_dict, id="ModelProfile"),
    ],
)
def test_round_trip_through_json_gives_an_equal_object(
    fixture: str, from_dict: Callable[[object], object], request: pytest.FixtureRequest
) -> None:
    obj = request.getfixturevalue(fixture)
    assert from_dict(_through_json(obj)) == obj


def test_unit_profile_round_trip(model_profile: ModelProfile) -> None:
    for unit in model_profile.units:
        assert unit_profile_from_dict(_through_json(unit)) == unit


def test_every_leaf_type_becomes_plain_data() -> None:
    unit = to_dict(Unit("lm_head", "Linear", 8, 0))
    assert (
        unit.items()
        >= {"name": "lm_head", "module_class": "Linear", "param_bytes": 8, "executed": True}.items()
    )
    assert to_dict(Edge("", "lm_head", 4, 1)) == {
        "producer": "",
        "consumer": "lm_head",
        "prefill_bytes": 4,
        "decode_bytes": 1,
    }
    assert to_dict(Link("cpu", "0", 1e-5, 2e10)) == {
        "src": "cpu",
        "dst": "0",
        "alpha_s": 1e-5,
        "beta_bytes_per_s": 2e10,
    }
    assert to_dict(UnitProfile("lm_head", "cpu", Phase.DECODE, 0.5, 3, 2))["phase"] == "decode"


def test_tuples_become_lists_and_enums_their_values(
    model_profile: ModelProfile, hardware: HardwareProfile
) -> None:
    data = to_dict(model_profile)
    assert data["graph"]["tied_groups"] == [["model.embed_tokens", "lm_head"]]
    assert isinstance(data["units"], list)
    assert {unit["phase"] for unit in data["units"]} == {"prefill", "decode"}
    assert to_dict(hardware)["devices"][0]["peak_flops"] == {"float32": 6.7e13, "float16": 9.9e14}


def test_absent_optional_fields_take_their_defaults() -> None:
    assert workload_from_dict({}) == Workload()
    graph = graph_from_dict(
        {
            "model_name": "m",
            "architecture": "A",
            "dtype": "float32",
            "fingerprint": "f",
            "units": [{"name": "u", "module_class": "", "param_bytes": 1, "buffer_bytes": 0}],
        }
    )
    assert graph == ModelGraph("m", "A", "float32", "f", (Unit("u", "", 1, 0),))


def test_to_dict_refuses_what_is_not_a_domain_object() -> None:
    with pytest.raises(TypeError, match="domain object"):
        to_dict({"a": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda d: d.pop("units"), r"^ModelGraph: missing field 'units'$", id="missing"),
        pytest.param(
            lambda d: d["units"][2].pop("param_bytes"),
            r"^ModelGraph\.units\[2\]: missing field 'param_bytes'$",
            id="missing-nested",
        ),
        pytest.param(
            lambda d: d["units"][3].update(param_bytes="8 KiB"),
            r"^ModelGraph\.units\[3\]\.param_bytes: expected an integer, got '8 KiB'$",
            id="wrong-type",
        ),
        pytest.param(
            lambda d: d["units"][0].update(executed=1),
            r"^ModelGraph\.units\[0\]\.executed: expected true or false, got 1$",
            id="int-for-bool",
        ),
        pytest.param(
            lambda d: d["edges"][0].update(prefill_bytes=True),
            r"^ModelGraph\.edges\[0\]\.prefill_bytes: expected an integer, got True$",
            id="bool-for-int",
        ),
        pytest.param(lambda d: d.update(unit=[]), r"^ModelGraph: unknown field 'unit'$", id="unknown"),
        pytest.param(
            lambda d: d.update(units={}), r"^ModelGraph\.units: expected a list, got \{\}$", id="not-a-list"
        ),
        pytest.param(
            lambda d: d["units"][1].update(buffer_bytes=-1),
            r"^ModelGraph\.units\[1\]: unit 'model.rotary_emb' has a negative byte count$",
            id="invariant",
        ),
    ],
)
def test_malformed_graph_names_the_field(
    graph: ModelGraph, damage: Callable[[dict[str, Any]], object], message: str
) -> None:
    data = _through_json(graph)
    damage(data)
    with pytest.raises(ValueError, match=message):
        graph_from_dict(data)


def test_malformed_documents_of_other_types(model_profile: ModelProfile, hardware: HardwareProfile) -> None:
    with pytest.raises(ValueError, match=r"^Workload: expected an object, got list$"):
        workload_from_dict([1, 64])
    with pytest.raises(ValueError, match=r"^Workload: unknown dtype 'int4'"):
        workload_from_dict({"dtype": "int4"})

    profile = _through_json(model_profile)
    profile["units"][5]["phase"] = "generate"
    with pytest.raises(
        ValueError, match=r"^ModelProfile\.units\[5\]\.phase: expected one of 'prefill', 'decode'"
    ):
        model_profile_from_dict(profile)

    spec = _through_json(hardware)
    spec["devices"][0]["peak_flops"]["float16"] = "fast"
    with pytest.raises(
        ValueError, match=r"^HardwareProfile\.devices\[0\]\.peak_flops\.float16: expected a number"
    ):
        hardware_from_dict(spec)

    spec = _through_json(hardware)
    spec["links"][0]["dst"] = "7"
    with pytest.raises(ValueError, match=r"^HardwareProfile: link 0->7 names an unknown device$"):
        hardware_from_dict(spec)

    spec = _through_json(hardware)
    spec["method"] = -1
    with pytest.raises(ValueError, match=r"^HardwareProfile: a measuring method's version is not negative"):
        hardware_from_dict(spec)


def test_a_hardware_profile_stored_before_methods_were_kept_reads_as_method_0(
    hardware: HardwareProfile,
) -> None:
    measured = dataclasses.replace(hardware, source="measured", method=3)
    stored = _through_json(measured)
    assert hardware_from_dict(stored) == measured
    del stored["method"]  # as a tuner of before the field wrote it
    assert hardware_from_dict(stored).method == 0


def test_runs_and_their_parts_round_trip_through_json(run: Run) -> None:
    winner = dataclasses.replace(run.baselines[0], trial=3, measured_s=0.125)
    finished = dataclasses.replace(
        run, id=7, status=RunStatus.COMPLETE, winner=winner, trials=4, created_at="2025-11-25T12:00:00+00:00"
    )
    assert run_from_dict(_through_json(finished)) == finished
    assert run_from_dict(_through_json(run)) == run  # no winner; an unpriced baseline
    for candidate in (*run.baselines, winner):
        assert candidate_from_dict(_through_json(candidate)) == candidate
        assert device_map_from_dict(_through_json(candidate.device_map)) == candidate.device_map
        if candidate.prediction is not None:
            assert prediction_from_dict(_through_json(candidate.prediction)) == candidate.prediction
    data = to_dict(finished)
    assert data["status"] == "complete" and data["pins"] == [["lm_head", "cpu"]]
    assert data["baselines"][2]["prediction"] is None
    assert data["winner"]["device_map"]["placements"][0] == ["model.embed_tokens", "0"]


def test_absent_optional_candidate_fields_are_none(run: Run) -> None:
    dmap = run.baselines[0].device_map
    assert candidate_from_dict({"name": "auto", "device_map": _through_json(dmap)}) == Candidate("auto", dmap)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(
            lambda d: d["winner"]["device_map"]["placements"][1].append("cpu"),
            r"^Run\.winner\.device_map\.placements\[1\]: expected a list of 2 items, got \[",
            id="pair-too-long",
        ),
        pytest.param(
            lambda d: d["pins"].__setitem__(0, "lm_head"),
            r"^Run\.pins\[0\]: expected a list of 2 items, got 'lm_head'$",
            id="pair-not-a-list",
        ),
        pytest.param(
            lambda d: d["winner"].update(trial="3"),
            r"^Run\.winner\.trial: expected an integer, got '3'$",
            id="optional-wrong-type",
        ),
        pytest.param(
            lambda d: d["baselines"][0]["device_map"]["placements"][0].__setitem__(1, "gpu0"),
            r"^Run\.baselines\[0\]\.device_map: unit 'model.embed_tokens': 'gpu0' is not a device",
            id="invariant",
        ),
        pytest.param(
            lambda d: d.update(status="paused"),
            r"^Run\.status: expected one of 'queued', 'running', 'complete', 'interrupted', 'failed', "
            r"got 'paused'$",
            id="status",
        ),
    ],
)
def test_malformed_run_names_the_field(
    run: Run, damage: Callable[[dict[str, Any]], object], message: str
) -> None:
    data = _through_json(dataclasses.replace(run, winner=run.baselines[0]))
    damage(data)
    with pytest.raises(ValueError, match=message):
        run_from_dict(data)
