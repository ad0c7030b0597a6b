"""The public Python API: `import tuner`, then `tuner.device_map(...)`, `tuner.from_pretrained(...)`.

Arguments are written as `from_pretrained` takes them: ``max_memory={0: "20GiB", "cpu": 64 * 2**30}``,
GPUs as ints (or ``"cuda:0"``), pins as ``{"lm_head": 1}``, your own maps as the dicts you would pass
as ``device_map``. Every error the tuner raises on purpose is a `tuner.TunerError` whose message names
the parameter at fault, and arguments are checked before anything is measured or stored.

``db`` is a SQLAlchemy URL or a SQLite file's path, or None for the default (``$TUNER_DB``, else a
SQLite file in your data folder); ``hardware`` is a spec file or a shipped spec's name, or None for
this machine.

Example (the README's "From Python" section runs in the test suite)::

    import tuner
    dmap = tuner.device_map("./my-llama", max_memory={"cpu": "2GiB"}, seq=256, new_tokens=64)
    model = AutoModelForCausalLM.from_pretrained("./my-llama", device_map=dmap)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import TypedDict

from tuner.core.domain import THIS_MACHINE
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Prediction
from tuner.core.domain import Run
from tuner.core.exceptions import ConstraintError
from tuner.core.exceptions import InfeasibleError
from tuner.workflows import Comparison
from tuner.workflows import OptimizeListener
from tuner.workflows import SearchSettings
from tuner.workflows import TuningRequest
from tuner.workflows import best_run
from tuner.workflows import cancel_run
from tuner.workflows import check_flags
from tuner.workflows import check_whole_numbers
from tuner.workflows import database_url
from tuner.workflows import get_run
from tuner.workflows import list_candidates
from tuner.workflows import list_runs
from tuner.workflows import measure_hardware
from tuner.workflows import profile
from tuner.workflows import queue_run
from tuner.workflows import read_map
from tuner.workflows import read_placements
from tuner.workflows import report_html
from tuner.workflows import run_history
from tuner.workflows import stored_hardware
from tuner.workflows import tune_queued
from tuner.workflows import upgrade_database
from tuner.workflows import validate

if TYPE_CHECKING:
    from transformers import PreTrainedModel
    from typing_extensions import Unpack

    from storage import Store

__all__ = [
    "PricingOptions",
    "TuningOptions",
    "best_run",
    "cancel_run",
    "compare",
    "database_url",
    "device_map",
    "fetch_map",
    "from_pretrained",
    "get_run",
    "list_candidates",
    "list_runs",
    "list_specs",
    "specs_folder",
    "measure_hardware",
    "stored_hardware",
    "open_database",
    "optimize",
    "price",
    "profile",
    "queue_run",
    "read_map",
    "read_spec",
    "report_html",
    "tune_queued",
    "run_history",
    "upgrade_database",
    "validate",
    "write_spec",
]


class PricingOptions(TypedDict, total=False):
    """The options `price` and `compare` take: those of `optimize` that say what is priced."""

    hardware: str | None
    batch: int
    seq: int
    new_tokens: int | None
    dtype: str
    max_memory: Mapping[Any, int | str] | None
    trust_remote_code: bool
    repeats: int
    db: str | Store | None
    listener: OptimizeListener | None


class TuningOptions(PricingOptions, total=False):
    """The options `optimize`, `device_map` and `from_pretrained` share; see `optimize`."""

    pins: Mapping[str, int | str] | None
    exclude: Iterable[int | str] | int | str
    calibrate: bool
    candidates: Iterable[Mapping[str, int | str]]
    trials: int
    timeout: float | None
    seed_search: bool
    random_seed: int | None
    force: bool
    resume: int | str | None
    measure: int
    measure_rounds: int


_REQUEST_OPTIONS = frozenset(
    {
        "hardware",
        "batch",
        "seq",
        "new_tokens",
        "dtype",
        "max_memory",
        "pins",
        "exclude",
        "candidates",
        "trust_remote_code",
        "calibrate",
    }
)
_SEARCH_OPTIONS = frozenset(SearchSettings.__dataclass_fields__)
#: What names a map stored at a service (`device_map(..., server=...)`).
_SERVER_OPTIONS = frozenset({"hardware", "batch", "seq", "new_tokens", "dtype", "max_memory"})
_OPTIONS = _REQUEST_OPTIONS | _SEARCH_OPTIONS | {"db", "listener"}


def optimize(model: str | os.PathLike[str], **options: Unpack[TuningOptions]) -> Run:
    """Find the fastest device map of `model` that fits, keep the run, and return it.

    The same call again answers from the database (``force=True`` measures and searches again).

    Args:
        model: a local folder (weights, or config.json alone) or a hub id in the local cache.
        hardware: a spec file or shipped spec name; None (default) plans for this machine.
        batch: prompts per call (1).
        seq: prompt length in tokens (128).
        new_tokens: tokens to generate; None (default) is 32 for a model that generates, else 0.
        dtype: ``auto`` (default): the dtype ``from_pretrained`` loads without one, the
            checkpoint's own (its config's ``dtype``, else its weights'); or ``float32``,
            ``float16``, ``bfloat16``. `Run.workload.dtype` holds the dtype used.
        max_memory: what each device may use, as `from_pretrained` takes it:
            ``{0: "20GiB", "cpu": 64 * 2**30}``; devices not named may use what is free.
        pins: units every candidate keeps on a device, ``{"lm_head": 1}``.
        exclude: devices no candidate may use, ``["disk"]``.
        candidates: your own maps (module prefixes and ``""`` allowed); they are priced and tried
            first, so the winner is never worse than any of them.
        trust_remote_code: let transformers run code shipped with the model (False).
        calibrate: multiply each phase's predicted seconds by the median of measured over
            predicted of the maps timed on this machine (by `validate` or ``measure``); the
            factors are kept in every prediction (`Prediction.calibration`). False.
        trials: Optuna trials (300); the seeds run even past them, so a run of 0 counts its
            seeds' trials. timeout: seconds of search at most (None).
        seed_search: start from accelerate's maps and the exact optimum, one trial each where
            they differ (True).
        random_seed: the sampler's seed (None). force: measure this machine and the model
            again, and search again (False).
        resume: continue the run with this id (or ``"latest"``), or join it as one more
            worker; the hardware, workload, limits, pins and excluded devices left out (or None)
            are the run's.
        repeats: timed calls per unit when profiling (5).
        measure: load this many of the fastest modelled maps, and accelerate's, for real and
            time them; the fastest measured map that fits wins (0: the modelled winner).
        measure_rounds: interleaved timed calls per measured map (5).
        db: a SQLAlchemy URL or a SQLite file's path; None is the default database.
        listener: an `OptimizeListener` to follow progress.

    Returns:
        The run; `Run.winner.device_map.to_hf()` is the map `from_pretrained` takes.

    Raises:
        ConstraintError, WorkloadError, ModelSourceError: a bad argument, before anything is
            measured or stored.
        InfeasibleError: no map fits, even with every unit on disk.
        RunInterrupted: Ctrl-C; the run keeps its trials (`resume` continues it).
    """
    from tuner.workflows import optimize as run_optimize

    request, settings, db, listener = _split("optimize", model, options)
    outcome = run_optimize(request, settings, db=db, listener=listener)
    return outcome.run


def device_map(
    model: str | os.PathLike[str], *, server: str | None = None, **options: Unpack[TuningOptions]
) -> dict[str, int | str]:
    """The tuned map of `model`, ready for ``from_pretrained(device_map=...)``.

    Takes every option of `optimize`. When the same request was tuned before, the stored winner is
    returned without loading any model code; otherwise the model is tuned now (and stored).
    A map with ``disk`` units of a ``.bin`` checkpoint, or of weights transformers converts as it
    loads them (most mixture-of-experts models' experts), needs ``offload_folder=...`` in
    ``from_pretrained`` as well (`tuner.from_pretrained` makes a temporary one).

    With `server` (``"http://host:8765"``, a `tuner serve`), the map is fetched from the service
    instead, by the names it was tuned with: `model` as named then, `hardware` (a spec), `batch`,
    `seq`, `new_tokens` and `dtype` (left out: any) and `max_memory`. Nothing is tuned, no
    database is opened, and neither torch nor SQLAlchemy is imported; ``TUNER_API_TOKEN`` is sent
    as the bearer token when set.

    Raises:
        the errors of `optimize`. With `server`: RunNotFoundError when the service has no such
        run (its message is the command that tunes it); StorageError when it cannot be reached;
        ConstraintError for an option that does not name a stored map.
    """
    if server is not None:
        return _served_map(model, server, options)
    return _winner(_tuned_run("device_map", model, options)).device_map.to_hf()


def _served_map(
    model: str | os.PathLike[str], server: str, options: Mapping[str, Any], *, with_max_memory: bool = False
) -> dict[str, Any]:
    """The map the service `server` stores for `model` and `options` (`device_map` with `server`);
    with `with_max_memory`, the document with the limits and dtype it was planned for."""
    from tuner.workflows.remote import best_map

    other = sorted(set(options) - _SERVER_OPTIONS)
    if other:
        raise ConstraintError(f"server: {other[0]} does not apply to a map fetched from a service")
    request = TuningRequest.from_arguments(model, **dict(options))
    return best_map(server, request, with_max_memory=with_max_memory)


def fetch_map(run: int | str, *, server: str, with_max_memory: bool = False) -> dict[str, Any]:
    """The winning map of a run stored at the service `server` (a `tuner serve`), as ``tuner
    export`` writes it: `run` is an id or ``"latest"``; with `with_max_memory`, ``{"device_map":
    ..., "max_memory": ..., "dtype": ...}``, GPUs as ints, ready for ``from_pretrained(path,
    **document)``.
    Neither torch nor SQLAlchemy is imported.

    Warns:
        UnfinishedRunWarning: the run is running, interrupted or failed: the map is its best so
            far (``tuner export`` prints it as a warning).

    Raises:
        RunNotFoundError: no such run, or it has no map yet.
        StorageError: the service cannot be reached or answers with an error.
    """
    from tuner.workflows.remote import run_map

    return run_map(server, run, with_max_memory=with_max_memory)


def from_pretrained(
    model: str | os.PathLike[str], *, server: str | None = None, **options: Any
) -> PreTrainedModel:
    """Load `model` with its tuned map: the class its config names, the dtype it was tuned in.

    Options of `optimize` tune (or find) the map; every other keyword goes to transformers'
    ``from_pretrained`` as it is (``attn_implementation=...``, ``offload_folder=...``), except
    three that would load another model than the one tuned for, refused with ConstraintError:
    ``device_map`` (tuned here), ``torch_dtype`` (give ``dtype``) and ``quantization_config``
    (tune a checkpoint saved quantized). A map with ``disk`` units of a ``.bin`` checkpoint gets
    a temporary offload folder unless you give one.

    With `server` (a `tuner serve`), the map is fetched from the service as `device_map` fetches
    it, by the names it was tuned with (a `hardware` spec this machine has, the workload, the
    `dtype`, `max_memory`), and nothing is tuned here; the model loads in the dtype of the run
    the service answers with (one of any dtype when `dtype` is left out).

    Raises:
        the errors of `optimize` (with `server`, those of `device_map`); ModelSourceError for a
        folder without weights and TypeError for a misspelled option of `optimize`
        (``max_memroy``), both before anything is tuned; ProfilingError when transformers cannot
        load the map.
    """
    from profiler.loading import load_with_map
    from profiler.loading import open_checkpoint
    from profiler.source import load_config

    if "device_map" in options:
        raise ConstraintError("from_pretrained tunes the device_map itself: leave device_map out")
    if "quantization_config" in options:
        raise ConstraintError(
            "from_pretrained tunes for the quantization the checkpoint's config.json names: a "
            "quantization_config given here would load weights other than the ones planned for; "
            "save the model quantized (save_pretrained) and tune that folder"
        )
    if "torch_dtype" in options:
        raise ConstraintError(
            "from_pretrained loads the model in the dtype it tunes the map for: give dtype "
            "(float32, float16, bfloat16 or auto), not torch_dtype"
        )
    tuning = {name: value for name, value in options.items() if name in _OPTIONS}
    loading = {name: value for name, value in options.items() if name not in _OPTIONS}
    check_flags(ConstraintError, trust_remote_code=tuning.get("trust_remote_code", False))  # read below
    source = open_checkpoint(os.fspath(model))  # a folder without weights, before minutes of tuning
    _refuse_misspelled_options(
        loading, load_config(source, trust_remote_code=bool(tuning.get("trust_remote_code")))
    )
    if tuning.get("resume") is not None and server is None:
        tuning = _with_the_resumed_runs_request(tuning)  # the hardware it is checked for is the run's
    _check_loadable_here(tuning.get("hardware"))
    trust_remote_code = bool(tuning.get("trust_remote_code", False))
    if server is not None:
        named = {name: value for name, value in tuning.items() if name != "trust_remote_code"}
        # with its limits, for the dtype it was planned in: "auto" matches a run of any dtype
        document = _served_map(model, server, named, with_max_memory=True)
        placements: Mapping[str, int | str] = document["device_map"]
        dtype = document["dtype"]
    else:
        run = _tuned_run("from_pretrained", model, tuning)
        placements, dtype = _winner(run).device_map.to_hf(), run.workload.dtype
    return load_with_map(
        os.fspath(model), placements, dtype=dtype, trust_remote_code=trust_remote_code, **loading
    )


def price(
    model: str | os.PathLike[str], device_map: Mapping[str, int | str], **options: Unpack[PricingOptions]
) -> Prediction:
    """What `device_map` (yours: module prefixes and ``""`` allowed) is predicted to cost, by the
    same cost model that prices every map `optimize` considers: latency per phase and peak
    memory per device against `max_memory`.

    Takes `optimize`'s options `hardware`, `batch`, `seq`, `new_tokens`, `dtype`, `max_memory`,
    `trust_remote_code`, `repeats`, `db` and `listener`. The model's profile is read from the
    database, or measured and stored (for a spec, estimated).

    Raises:
        ConstraintError: the map names no module of the model, splits a unit, leaves a unit out,
            or uses a device the hardware lacks; any error of `optimize`'s arguments.
    """
    from tuner.workflows import price as run_price

    request, repeats, db, listener = _pricing("price", model, options)
    return run_price(request, _map_argument(device_map), db=db, repeats=repeats, listener=listener)


def compare(
    model: str | os.PathLike[str], device_map: Mapping[str, int | str], **options: Unpack[PricingOptions]
) -> Comparison:
    """`price`, with accelerate's strategies, the single-device maps and the exact optimum priced
    beside your map (what ``tuner price MAP.json MODEL`` shows)."""
    from tuner.workflows import compare as run_compare

    request, repeats, db, listener = _pricing("compare", model, options)
    return run_compare(request, _map_argument(device_map), db=db, repeats=repeats, listener=listener)


def read_spec(spec: str | os.PathLike[str]) -> HardwareProfile:
    """A machine you do not have, from a spec file or a shipped spec's name (see `list_specs`)."""
    from pathlib import Path

    from profiler.spec import load_spec

    return load_spec(spec if isinstance(spec, str) else Path(spec))


def list_specs() -> dict[str, str]:
    """The specs shipped with the tuner: name -> one-line description."""
    from profiler.spec import shipped_specs

    return shipped_specs()


def specs_folder() -> Path:
    """The folder of the shipped specs' files: copy the nearest one to describe a machine of your own."""
    from profiler.spec import SPECS_DIR

    return SPECS_DIR


def write_spec(hardware: HardwareProfile, path: str | os.PathLike[str], *, name: str | None = None) -> None:
    """Write `hardware` (measured here, say) as a spec file that `read_spec` reads anywhere, named
    `name` (by default this machine's host for a measured profile; a profile read from a spec
    does not keep the spec's name, so give it again)."""
    from profiler.spec import dump_spec

    if not isinstance(hardware, HardwareProfile):
        raise TypeError(
            "write_spec takes a HardwareProfile (from measure_hardware or read_spec), "
            f"not {type(hardware).__name__}"
        )
    dump_spec(hardware, Path(path), name=name)


def open_database(db: str | None = None) -> Store:
    """The database `db` names (None: the default), opened once for many calls: pass it as
    ``db=`` to any function here. A long-running process (a service) keeps one, its connections
    pooled, instead of opening the database on every call. Close it with ``close()``, or use it
    as a context manager.

    Raises:
        StorageError: the database cannot be reached, created or read.
        SchemaOutdatedError: its schema is older (``tuner db upgrade``) or newer than this tuner's.
    """
    from storage import Store

    return Store(db)


def _split(
    caller: str, model: str | os.PathLike[str], options: Mapping[str, Any]
) -> tuple[TuningRequest, SearchSettings, str | None, OptimizeListener | None]:
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
    searching = {name: value for name, value in options.items() if name in _SEARCH_OPTIONS}
    resume = searching.pop("resume", None)
    settings = SearchSettings(**searching, resume=None if resume == "latest" else resume)  # checked first
    if resume is not None:
        options = _with_the_resumed_runs_request(options)
        settings = dataclasses.replace(settings, resume=options["resume"])
    request = TuningRequest.from_arguments(
        model, **{name: value for name, value in options.items() if name in _REQUEST_OPTIONS}
    )
    listener = options.get("listener")
    if listener is not None and not isinstance(listener, OptimizeListener):
        raise TypeError(f"listener must be an OptimizeListener (got {listener!r})")
    return request, settings, options.get("db"), listener


def _with_the_resumed_runs_request(options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` of a resume, what they leave out taken from the run `resume` names (its
    hardware, workload, limits, pins and excluded devices: as ``tuner optimize --resume`` takes
    them), and `resume` as that run's id (``"latest"`` is the newest run)."""
    stored = get_run(options["resume"], db=options.get("db"))
    given = {name: value for name, value in options.items() if value is not None}  # None: the default
    workload = stored.workload
    of_the_run: dict[str, Any] = {
        "max_memory": dict(stored.max_memory),
        "batch": workload.batch,
        "seq": workload.seq,
        "new_tokens": workload.new_tokens,
        "dtype": workload.dtype,
        "pins": dict(stored.pins),
        "exclude": stored.exclude,
    }
    if stored.hardware_name != THIS_MACHINE:
        of_the_run["hardware"] = stored.hardware_name
    return {**of_the_run, **given, "resume": stored.id}


def _pricing(
    caller: str, model: str | os.PathLike[str], options: Mapping[str, Any]
) -> tuple[TuningRequest, int, str | None, OptimizeListener | None]:
    unknown = sorted(set(options) - set(PricingOptions.__annotations__))
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
    fields = {name: value for name, value in options.items() if name in _REQUEST_OPTIONS}
    repeats = options.get("repeats", 5)
    check_whole_numbers(ConstraintError, repeats=(repeats, 1))
    return TuningRequest.from_arguments(model, **fields), repeats, options.get("db"), options.get("listener")


def _tuned_run(caller: str, model: str | os.PathLike[str], options: Mapping[str, Any]) -> Run:
    """The stored answer to this very request when there is one (no search, no torch), else a
    run tuned now."""
    from storage import opened
    from tuner.workflows import find_tuned_run
    from tuner.workflows import optimize as run_optimize

    request, settings, db, listener = _split(caller, model, options)
    if not settings.force and settings.resume is None:
        with opened(db) as store:
            found = find_tuned_run(request, store, measured=settings.measure > 0)
        if found is not None:
            return found
    return run_optimize(request, settings, db=db, listener=listener).run


def _refuse_misspelled_options(loading: Mapping[str, Any], config: Any) -> None:
    """Refuse, before any tuning, a keyword meant for the tuner but misspelled (``max_memroy``):
    passed on to transformers it would fail only once the map is tuned and stored, and the
    tuning would have ignored it. A keyword that names an attribute of the model's `config`
    (``max_new_tokens`` of SeamlessM4T, XLNet's ``n_token``) is the model's, however close; no
    keyword of transformers' own ``from_pretrained`` is this close to one of the tuner's."""
    import difflib

    for name in loading:
        if hasattr(config, name):
            continue
        meant = difflib.get_close_matches(name, _OPTIONS, n=1, cutoff=0.75)
        if meant:
            raise TypeError(
                f"from_pretrained() got an unexpected keyword argument {name!r}; did you mean {meant[0]!r}?"
            )


def _check_loadable_here(hardware: Any) -> None:
    """Refuse, before any tuning, to load here a map planned for a spec whose GPUs this machine
    lacks."""
    from profiler.loading import absent_devices

    if not isinstance(hardware, (str, os.PathLike)) or hardware == THIS_MACHINE:
        return  # this machine, or a value the request refuses with its own message
    spec = read_spec(hardware)
    absent = absent_devices(device.key for device in spec.compute_devices)
    if absent:
        raise ConstraintError(
            f"from_pretrained loads the model on this machine, which has no {absent} of hardware "
            f"{hardware!r}; tuner.device_map(..., hardware={hardware!r}) gives that machine's map"
        )


def _winner(run: Run) -> Any:
    if run.winner is None:
        raise InfeasibleError(run.no_map)
    return run.winner


def _map_argument(device_map: Mapping[str, int | str]) -> dict[str, str]:
    return read_placements("device_map", device_map)
