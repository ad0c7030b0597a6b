"""The service's JSON documents, as pydantic models: they make the OpenAPI document, and the tests
check every response against it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from pydantic import Field

from tuner.core.devices import to_hf
from tuner.core.domain import Run

__all__ = ["ErrorOut", "RunListOut", "RunOut", "run_out"]

#: A run's status, as the API names it.
Status = Literal["running", "complete", "interrupted", "failed"]


class ErrorOut(BaseModel):
    """Every error: one line that says what is wrong and, where there is one, what to do."""

    error: str = Field(examples=["no stored run has id 7"])


class WorkloadOut(BaseModel):
    batch: int
    seq: int
    new_tokens: int
    dtype: str


class WinnerOut(BaseModel):
    """The run's best map: `device_map` is what ``from_pretrained(device_map=...)`` takes."""

    name: str
    predicted_s: float | None
    measured_s: float | None
    device_map: dict[str, int | str]


class RunOut(BaseModel):
    """One tuning run: what was asked, where it stands, and its winner once it has one."""

    id: int
    status: Status
    model: str
    hardware: str
    workload: WorkloadOut
    max_memory: dict[str, int]
    pins: dict[str, int | str]
    exclude: list[int | str]
    trials: int
    created_at: str
    winner: WinnerOut | None
    map_url: str
    report_url: str


class RunListOut(BaseModel):
    """A page of runs, newest first; `next_offset` asks for the next page (None: no more)."""

    runs: list[RunOut]
    limit: int
    offset: int
    next_offset: int | None


def run_out(run: Run) -> RunOut:
    """The document of `run`; device keys written as ``from_pretrained`` takes them."""
    winner = run.winner
    predicted = winner.prediction.latency_s if winner is not None and winner.prediction is not None else None
    return RunOut(
        id=run.id,
        status=run.status.value,
        model=run.model_name,
        hardware=run.hardware_name,
        workload=WorkloadOut(
            batch=run.workload.batch,
            seq=run.workload.seq,
            new_tokens=run.workload.new_tokens,
            dtype=run.workload.dtype,
        ),
        max_memory={str(to_hf(key)): limit for key, limit in run.max_memory.items()},
        pins={unit: to_hf(place) for unit, place in run.pins},
        exclude=[to_hf(key) for key in run.exclude],
        trials=run.trials,
        created_at=run.created_at,
        winner=None
        if winner is None
        else WinnerOut(
            name=winner.name,
            predicted_s=predicted,
            measured_s=winner.measured_s,
            device_map=winner.device_map.to_hf(),
        ),
        map_url=f"/v1/runs/{run.id}/map",
        report_url=f"/v1/runs/{run.id}/report",
    )
