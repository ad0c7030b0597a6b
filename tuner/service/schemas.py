"""The service's JSON documents, as pydantic models: they make the OpenAPI document, and the tests
check every response against it."""

from __future__ import annotations

from typing import Annotated
from typing import Literal
from typing import cast

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import StringConstraints
from pydantic import field_validator

from tuner.core.devices import to_hf
from tuner.core.domain import MAX_QUEUED_TIMEOUT_S
from tuner.core.domain import MAX_STORED_INT
from tuner.core.domain import Run
from tuner.core.sizes import parse_max_memory

__all__ = ["ErrorOut", "QueuedOut", "RunListOut", "RunOut", "TuningRequestIn", "queued_out", "run_out"]

#: The most trials one request may ask for.
MAX_TRIALS = 100_000
#: The most entries of a request's limits, pins or exclusions.
MAX_ENTRIES = 256
#: Text a request may carry: no control characters (PostgreSQL refuses NUL in text).
TEXT = r"^[^\x00-\x1f\x7f]*$"

Key = Annotated[str, StringConstraints(max_length=64, pattern=TEXT)]
Name = Annotated[str, StringConstraints(max_length=512, pattern=TEXT)]
# Strict: JSON's true is no size and no GPU, where lax mode reads it as 1.
Size = (
    Annotated[int, Field(ge=0, strict=True)] | Annotated[str, StringConstraints(max_length=64, pattern=TEXT)]
)
Place = (
    Annotated[int, Field(ge=0, le=MAX_STORED_INT, strict=True)]
    | Annotated[str, StringConstraints(max_length=64, pattern=TEXT)]
)

#: A run's status, as the API names it.
Status = Literal["queued", "running", "complete", "interrupted", "failed"]
Inputs = Literal["text", "vision", "speech"]


class ErrorOut(BaseModel):
    """Every error: one line that says what is wrong and, where there is one, what to do."""

    error: str = Field(examples=["no stored run has id 7"])


class WorkloadOut(BaseModel):
    """What the run was tuned for; `inputs` is what the model takes as a prompt: ``text`` (of
    `seq` tokens), ``vision`` (an image) or ``speech`` (an audio clip), whose `seq` is not used."""

    batch: int
    seq: int
    new_tokens: int
    dtype: str
    inputs: Inputs = "text"


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
    requested_trials: int | None = Field(description="the trials a queued request asked for")
    requested_timeout_s: float | None = Field(
        None, description="the time limit a queued request asked for, in seconds"
    )
    error: str = Field(description="why the run failed; empty unless it did")
    map_url: str
    report_url: str


class TuningRequestIn(BaseModel):
    """A tuning request for the queue: the model on a spec's machine for a workload, under limits.
    Arguments are written as ``from_pretrained`` takes them. There is no ``trust_remote_code``:
    a request could then run any repository's code on every worker; a worker's operator allows
    it for all its runs (``tuner worker --trust-remote-code``). There is no ``measure``: a queued
    run is planned for a spec (`hardware`), not timed on the worker's own machine."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1, max_length=4096, pattern=TEXT, description="a hub id or a folder the workers can read"
    )
    hardware: str = Field(
        min_length=1,
        max_length=512,
        pattern=TEXT,
        description="a shipped spec's name (tuner hardware --list-specs) or a spec file the workers can read",
    )
    dtype: Literal["float32", "float16", "bfloat16"]
    # strict: JSON's true is no count of prompts (lax pydantic would read it as 1)
    batch: int = Field(1, ge=1, le=MAX_STORED_INT, strict=True)
    seq: int = Field(128, ge=1, le=MAX_STORED_INT, strict=True)
    new_tokens: int | None = Field(
        None,
        ge=0,
        le=MAX_STORED_INT,
        strict=True,
        description="tokens to generate; left out: 32 for a model that generates, 0 for one that does not "
        "(read from the model's config, so the service must be able to read the model)",
    )
    max_memory: dict[Key, Size] = Field(
        default_factory=dict,
        max_length=MAX_ENTRIES,
        examples=[{"0": "20GiB", "cpu": "64GiB"}],
        description='device -> size, or one text as --max-memory takes it: "0=20GiB,cpu=64GiB"',
    )

    @field_validator("max_memory", mode="before")
    @classmethod
    def _limits_as_text(cls, value: object) -> object:
        """``"0=20GiB,cpu=64GiB"`` read as `GET /v1/best` and ``--max-memory`` read it."""
        if isinstance(value, str) and len(value) <= 512:
            return parse_max_memory(value)  # its ValueError names what is wrong
        return value

    pins: dict[Name, Place] = Field(default_factory=dict, max_length=MAX_ENTRIES, examples=[{"lm_head": 0}])
    exclude: list[Place] = Field(default_factory=list, max_length=MAX_ENTRIES, examples=[["disk"]])
    trials: int = Field(
        300, ge=0, le=MAX_TRIALS, strict=True, description="shared by every worker that searches the run"
    )
    timeout: float | None = Field(
        None,
        gt=0,
        le=MAX_QUEUED_TIMEOUT_S,
        allow_inf_nan=False,  # NaN compares false with the bounds: "should be less than" misled
        description="seconds the search may take in all, from when its first worker starts searching "
        "(after preparing the model); workers that join or resume the run stop at the same moment",
    )


class QueuedOut(BaseModel):
    """A request taken into the queue: its run, and where to follow it. The run of an equal
    request made before answers while it is queued or being tuned: its status may be past
    ``queued``."""

    id: int
    status: Status
    url: str


class RunListOut(BaseModel):
    """A page of runs, newest first; `next_offset` asks for the next page (None: no more)."""

    runs: list[RunOut]
    limit: int
    offset: int
    next_offset: int | None


def queued_out(run: Run) -> QueuedOut:
    """The answer to a tuning request that `run` stands for."""
    return QueuedOut(id=run.id, status=cast(Status, run.status.value), url=f"/v1/runs/{run.id}")


def run_out(run: Run) -> RunOut:
    """The document of `run`; device keys written as ``from_pretrained`` takes them."""
    winner = run.winner
    predicted = winner.prediction.latency_s if winner is not None and winner.prediction is not None else None
    return RunOut(
        id=run.id,
        status=cast(Status, run.status.value),
        model=run.model_name,
        hardware=run.hardware_name,
        workload=WorkloadOut(
            batch=run.workload.batch,
            seq=run.workload.seq,
            new_tokens=run.workload.new_tokens,
            dtype=run.workload.dtype,
            inputs=cast(Inputs, run.inputs),
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
        requested_trials=run.requested_trials,
        requested_timeout_s=run.requested_timeout_s,
        error=run.error,
        map_url=f"/v1/runs/{run.id}/map",
        report_url=f"/v1/runs/{run.id}/report",
    )
