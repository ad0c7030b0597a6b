"""Each phase of a map measured on the machine it was planned for is stored with the map, and
read back per machine as what `optimize --calibrate` learns from."""

from __future__ import annotations

import dataclasses

from storage import Store
from tuner.core.codec import candidate_from_dict
from tuner.core.codec import to_dict
from tuner.core.domain import Candidate
from tuner.core.domain import Run


def test_measured_phases_are_stored_and_found_once_per_map_of_a_run(store: Store, run: Run) -> None:
    auto = run.baseline("auto")
    twin = Candidate("balanced", auto.device_map, auto.prediction)
    run_id = store.create_run(dataclasses.replace(run, baselines=(*run.baselines, twin)))
    other = run.baseline("single:0")
    busy = "other processes used 1.2 of 2 cpus (60%) while measuring"
    measured = [
        dataclasses.replace(auto, measured_s=0.5, measured_prefill_s=0.25, measured_decode_s=0.125),
        # the same map under another name shares the measurement: found once
        dataclasses.replace(twin, measured_s=0.5, measured_prefill_s=0.25, measured_decode_s=0.125),
        dataclasses.replace(other, measured_s=0.75, measured_prefill_s=0.5, measure_busy=busy),
    ]
    store.record_measurements(run_id, measured, winner=None, phase_seconds={})
    found = store.get_run(run_id)
    assert found.baseline("auto").measured_decode_s == 0.125
    assert found.baseline(other.name).measure_busy == busy
    assert found.baseline(other.name).measured_decode_s is None
    phases = store.measured_phases(run.hardware_fingerprint)
    assert sorted((c.measured_prefill_s, c.measure_busy) for c in phases) == [(0.25, ""), (0.5, busy)]
    assert store.measured_phases("another machine") == []


def test_a_candidate_without_measured_phases_reads_as_before(run: Run) -> None:
    data = to_dict(run.baseline("auto"))
    assert (data.pop("measured_prefill_s"), data.pop("measured_decode_s"), data.pop("measure_busy")) == (
        None,
        None,
        "",
    )
    assert candidate_from_dict(data) == run.baseline("auto")
