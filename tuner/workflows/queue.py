"""The queue of tuning requests: the runs table itself. `queue_run` stores a request as a queued
run, checked as far as can be without the model's files (the workers read those), and
`cancel_run` withdraws one; `tuning.tune_queued` is the worker's side.

A queued run holds the request as asked, with its workload in full: the dtype a worker loads the
model in and the tokens it generates are named, not left for the model to decide, so that the
run says what it answers from the start and a client can look its map up by the same words.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable
from collections.abc import Mapping
from datetime import datetime
from datetime import timezone
from typing import TYPE_CHECKING
from typing import Any

from tuner.core.domain import DTYPE_BYTES
from tuner.core.domain import MAX_QUEUED_TIMEOUT_S
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.domain import Workload
from tuner.core.exceptions import ConstraintError
from tuner.core.exceptions import ModelSourceError
from tuner.core.exceptions import WorkloadError
from tuner.workflows.request import TuningRequest
from tuner.workflows.request import absolute_path
from tuner.workflows.request import check_devices_named
from tuner.workflows.request import check_spec_name
from tuner.workflows.request import check_whole_numbers

if TYPE_CHECKING:
    from storage import Store

__all__ = ["cancel_run", "queue_run"]


def queue_run(
    model: str | os.PathLike[str],
    *,
    hardware: str,
    dtype: str,
    batch: int = 1,
    seq: int = 128,
    new_tokens: int | None = None,
    max_memory: Mapping[Any, int | str] | None = None,
    pins: Mapping[str, int | str] | None = None,
    exclude: Iterable[int | str] | int | str = (),
    trials: int = 300,
    timeout: float | None = None,
    db: str | Store | None = None,
) -> Run:
    """Store a tuning request as a queued run, for a worker (`tune_queued`) to take; while an
    equal request (the same arguments) waits in the queue or is being tuned, that run instead.

    Args:
        model: a hub id or a folder, as the workers can read it.
        hardware: the spec the map is planned for: a shipped spec's name (checked here) or a
            spec file the workers can read.
        dtype: ``float32``, ``float16`` or ``bfloat16``.
        new_tokens: tokens to generate; None (default) is 32 for a model that generates, else 0,
            as `optimize` decides: read here from the model's config, so a model that this
            process cannot read (a hub id not in its cache) must name them.
        trials: the search's trials, shared by every worker that works on the run.
        timeout: the seconds the search may take in all, counted from when its first worker
            starts searching (after preparing the model); workers that join it, or resume it
            after the others stopped, end at the same moment. None: no limit.

    Raises:
        WorkloadError, ConstraintError, SpecError: an argument that cannot be used; nothing is
            stored.
    """
    from profiler.spec import shipped_specs
    from storage import opened

    if dtype not in DTYPE_BYTES:
        raise WorkloadError(
            f"dtype: a queued request names its dtype, one of {', '.join(DTYPE_BYTES)} (got {dtype!r})"
        )
    if new_tokens is not None:
        check_whole_numbers(WorkloadError, new_tokens=(new_tokens, 0))
    check_whole_numbers(ConstraintError, trials=(trials, 0))
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 < timeout <= MAX_QUEUED_TIMEOUT_S
    ):
        raise ConstraintError(
            f"timeout must be a positive number of seconds, at most {MAX_QUEUED_TIMEOUT_S} (30 days; "
            f"got {timeout!r})"
        )
    if not isinstance(hardware, str) or not hardware:
        raise ConstraintError(f"hardware must name a spec (got {hardware!r})")
    # a shipped spec misspelt, or 'this machine', which no worker can plan for: refused now
    check_spec_name(hardware)
    shipped = shipped_specs()
    if hardware not in shipped:  # a spec file: the one this process names, wherever a worker starts
        hardware = absolute_path(hardware)
    request = TuningRequest.from_arguments(
        model,
        hardware=hardware,
        batch=batch,
        seq=seq,
        new_tokens=new_tokens,
        dtype=dtype,
        max_memory=max_memory,
        pins=pins,
        exclude=exclude,
    )
    if hardware in shipped or os.path.exists(hardware):
        # A spec file this process can read is checked now (a worker reads its own copy); one it
        # cannot is the workers' to read.
        from profiler.spec import load_spec

        check_devices_named(request, load_spec(hardware))
    if new_tokens is None:  # last: the model is read, the rest was checked without it
        new_tokens = _default_new_tokens(request.model)
    queued = Run(
        id=0,
        key="",
        model_name=request.model,
        model_fingerprint="",
        hardware_name=hardware,
        hardware_fingerprint="",
        workload=Workload(batch=request.batch, seq=request.seq, new_tokens=new_tokens, dtype=dtype),
        max_memory=dict(request.max_memory),
        pins=tuple(sorted(request.pins.items())),
        exclude=request.exclude,
        study_name=f"tuner-queued-{int(time.time())}-{secrets.token_hex(6)}",
        status=RunStatus.QUEUED,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        requested_trials=trials,
        requested_timeout_s=None if timeout is None else float(timeout),
    )
    with opened(db) as store, store.exclusive():
        waiting = store.find_waiting_request(queued)
        return waiting if waiting is not None else store.get_run(store.create_run(queued))


def cancel_run(run_id: int, *, db: str | Store | None = None) -> Run:
    """Withdraw a run that no worker is tuning: a queued one, which no worker will take, or an
    interrupted one, which no worker will resume. It is marked failed, with why ("cancelled
    ..."), and keeps what it found; an equal request queued later is tuned afresh.

    Returns:
        The run as it is now.

    Raises:
        RunNotFoundError: no run has this id.
        ConstraintError: a worker is tuning the run (stop it first), or the run has ended.
    """
    from storage import opened

    check_whole_numbers(ConstraintError, run=(run_id, 1))
    with opened(db) as store:
        return store.cancel_run(run_id)


def _default_new_tokens(model: str) -> int:
    """32 for a model that generates, else 0, read from its config as `optimize` reads it.

    Raises:
        WorkloadError: the model cannot be read here, naming it and what to ask instead.
    """
    from profiler.model import generates
    from profiler.source import load_config
    from profiler.source import resolve_source

    try:
        config = load_config(resolve_source(model))
    except ModelSourceError as exc:
        raise WorkloadError(
            f"model: {exc}; with new_tokens left out its config is read here, to ask for 32 new "
            "tokens of a model that generates and 0 of one that does not: for a model only the "
            "workers can read, give new_tokens"
        ) from None
    return 32 if generates(config) else 0
