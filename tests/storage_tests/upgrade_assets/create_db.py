"""Write `<head revision>.db` here: a hardware profile, a model profile and runs, for upgrade tests.

Run it once with the tuner at a new schema revision and keep the file: later tuners must still
open it after `Store.upgrade()`.

    python tests/storage_tests/upgrade_assets/create_db.py
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from alembic.script import ScriptDirectory

import storage.store
from storage import Store
from tuner.core.domain import Candidate
from tuner.core.domain import Device
from tuner.core.domain import DeviceMap
from tuner.core.domain import DeviceMemory
from tuner.core.domain import HardwareProfile
from tuner.core.domain import ModelGraph
from tuner.core.domain import ModelProfile
from tuner.core.domain import Phase
from tuner.core.domain import PhaseCost
from tuner.core.domain import Prediction
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.domain import Unit
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload


def main() -> None:
    (head,) = ScriptDirectory(str(storage.store.MIGRATIONS_DIR)).get_heads()
    path = Path(__file__).with_name(f"{head}.db")
    path.unlink(missing_ok=True)
    hardware = HardwareProfile(devices=(Device("cpu", "cpu", "Asset CPU", 2**34, 2**33),), host="asset-host")
    graph = ModelGraph(
        model_name="asset-model",
        architecture="LlamaForCausalLM",
        dtype="float32",
        fingerprint="asset-model-fp",
        units=(Unit("model.embed_tokens", "Embedding", 4096, 0), Unit("lm_head", "Linear", 4096, 0)),
        tied_groups=(("model.embed_tokens", "lm_head"),),
    )
    units = tuple(
        UnitProfile(name, "cpu", phase, 1e-4, 1024, 512)
        for name in graph.unit_names
        for phase in (Phase.PREFILL, Phase.DECODE)
    )
    workload = Workload(batch=1, seq=16, new_tokens=4)
    on_cpu = DeviceMap((("model.embed_tokens", "cpu"), ("lm_head", "cpu")))
    prediction = Prediction(
        prefill=PhaseCost(compute_s=0.25, stream_s=0.0, transfer_s=0.0),
        decode=PhaseCost(compute_s=0.125, stream_s=0.0, transfer_s=0.0),
        new_tokens=4,
        memory=(DeviceMemory("cpu", 4096, 0, 256, 1024, 0, 2**33),),
    )
    baseline = Candidate("auto", on_cpu, prediction)
    run = Run(
        id=0,
        key="asset-run-key",
        model_name=graph.model_name,
        model_fingerprint=graph.fingerprint,
        hardware_name="this machine",
        hardware_fingerprint=hardware.fingerprint,
        workload=workload,
        max_memory={"cpu": 2**33},
        pins=(("lm_head", "cpu"),),
        exclude=("disk",),
        study_name="asset-study",
        status=RunStatus.RUNNING,
        baselines=(baseline,),
        created_at="2025-11-25T12:00:00+00:00",
    )
    with Store(f"sqlite:///{path}") as store:
        store.save_hardware(hardware)
        busy = "other processes used 1.2 of 2 cpus (60%) while measuring"  # revision 0007
        store.save_profile(
            ModelProfile(graph, workload, hardware.fingerprint, units, full=True, seconds=0.5, busy=busy)
        )
        run_id = store.create_run(run)
        trial = Candidate("trial 0", on_cpu, prediction, trial=0)
        store.add_candidates(run_id, [trial])
        store.finish_run(
            run_id, status=RunStatus.COMPLETE, winner=baseline, trials=1, phase_seconds={"search": 0.5}
        )
        store.record_measurements(
            run_id,
            [
                # the phases (revision 0008): prefill 0.3 s, decode steps 0.15 s
                replace(baseline, measured_s=0.75, measured_prefill_s=0.3, measured_decode_s=0.15),
                replace(trial, measure_error="out of memory on cpu"),
            ],
            winner="auto",
            phase_seconds={"search": 0.5, "measure": 1.5},
        )
        store.remember_request("asset-request-key", run_id)
        # Left running by a process that died the same day (its lease, revision 0005, expired).
        store.create_run(replace(run, key="asset-running-key", study_name="asset-study-running"))
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE runs SET heartbeat_at = created_at WHERE key = 'asset-running-key'")
    connection.close()
    path.with_name(f"{path.name}.lock").unlink(missing_ok=True)
    print(f"wrote {path} (hardware {hardware.fingerprint})")


if __name__ == "__main__":
    main()
