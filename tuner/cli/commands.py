"""The `tuner` commands: each parses its flags, calls the public API (`import tuner`), and prints.

Every failure the library raises on purpose is a `TunerError`; here, and only here, it becomes one
line on stderr and a non-zero exit. `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import NoReturn

import click
from click.core import ParameterSource

import tuner
from tuner.cli.interrupts import STOPPED_STATUSES
from tuner.cli.interrupts import Interrupt
from tuner.cli.interrupts import exit_status
from tuner.cli.options import DEVICE_MAP_FILE
from tuner.cli.options import MAP_FILE_WITH_LIMITS
from tuner.cli.options import PIN
from tuner.cli.options import RUN
from tuner.cli.options import db_option
from tuner.cli.options import json_option
from tuner.cli.options import planning_options
from tuner.cli.options import workload_options
from tuner.cli.progress import ProgressBar
from tuner.core.codec import to_dict
from tuner.core.domain import AUTO_DTYPE
from tuner.core.domain import DTYPE_CHOICES
from tuner.core.domain import MAX_RANDOM_SEED
from tuner.core.exceptions import ConstraintError
from tuner.core.exceptions import RunInterrupted
from tuner.core.exceptions import SchemaOutdatedError
from tuner.core.exceptions import StorageError
from tuner.core.exceptions import TunerError

if TYPE_CHECKING:
    from rich.console import Console

    from tuner.core.domain import Candidate
    from tuner.core.domain import HardwareProfile
    from tuner.core.domain import Run
    from tuner.workflows import MapArguments

__all__ = ["cli", "run"]

_EXIT_ERROR = 1
#: The longest a worker waits for an unreachable database before it tries again.
_MOST_RETRY_S = 60.0


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(tuner.__version__, prog_name="tuner")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Find where each part of a model should live (GPUs, CPU RAM, disk) to run fastest while it fits.

    \b
    Start here:
      tuner hardware                 what this machine has, and how fast it moves bytes
      tuner optimize ./my-model      the fastest map that fits (tuner export writes it)
      tuner price map.json ./model   your own map, beside accelerate's and the optimum
    """
    ctx.obj = {"debug": debug}


@cli.command()
@click.argument("model")
@workload_options
@click.option(
    "--repeats", default=5, show_default=True, type=click.IntRange(min=1), help="Timed runs per unit."
)
@click.option(
    "--full", is_flag=True, help="Measure every unit, even ones identical to a unit already measured."
)
@click.option("--force", is_flag=True, help="Measure again even if the database has this profile.")
@click.option(
    "--device",
    "devices",
    multiple=True,
    metavar="KEY",
    help="Compute device to measure on (cpu, 0, 1, ...); repeatable. [default: every GPU, else cpu]",
)
@json_option
@db_option
def profile(
    model: str,
    batch: int,
    seq: int,
    new_tokens: int | None,
    dtype: str,
    repeats: int,
    full: bool,
    force: bool,
    devices: Sequence[str],
    trust_remote_code: bool,
    json_: bool,
    db_url: str | None,
) -> None:
    """Measure MODEL on this machine: per-unit time, activation peak and KV cache per token.

    MODEL is a local folder (safetensors weights, or config.json alone) or a hub id already in the
    local Hugging Face cache. Identical units (decoder layers) are measured once and shared; the
    result is stored, and the same command again answers from the database.

    \b
    Examples:
      tuner profile ./llama-tiny --seq 512 --new-tokens 64
      tuner profile meta-llama/Llama-2-7b-hf --dtype bfloat16 --json > profile.json
    """
    with ProgressBar(enabled=not json_, first="tracing the model") as progress:
        outcome = tuner.profile(
            model,
            batch=batch,
            seq=seq,
            new_tokens=new_tokens,
            dtype=dtype,
            repeats=repeats,
            full=full,
            force=force,
            devices=devices,
            trust_remote_code=trust_remote_code,
            db=db_url,
            listener=progress,
        )
    if json_:
        document = {"profile_id": outcome.profile_id, "reused": outcome.reused, **to_dict(outcome.profile)}
        _print_json(document)
        return
    from reports.terminal import format_seconds
    from reports.terminal import profile_table

    console = _stdout()
    console.print(profile_table(outcome.profile, outcome.inputs))
    shared = len({p.unit for p in outcome.profile.units if p.shared})
    where = (
        f"from the database (profile {outcome.profile_id}; --force measures again)"
        if outcome.reused
        else f"measured in {format_seconds(outcome.profile.seconds)}, stored as profile {outcome.profile_id}"
    )
    console.print(
        f"{len(outcome.profile.graph.units)} units ({shared} share an identical unit's measurement); {where}"
    )
    console.print(_dtype_line(dtype, outcome.profile.workload.dtype))
    if not outcome.reused:  # how it was measured: nothing was, now
        click.echo(f"note: {outcome.weights_note}", err=True)


@cli.command()
@click.option(
    "--spec",
    "spec",
    metavar="FILE|NAME",
    help="Show a spec file, or a shipped spec by name, instead of measuring; nothing is stored.",
)
@click.option(
    "--export",
    "export",
    metavar="FILE",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Measure this machine as usual, then also write it as a spec file (for --spec elsewhere).",
)
@click.option("--list-specs", is_flag=True, help="List the specs shipped with the tuner and exit.")
@click.option(
    "--stored",
    is_flag=True,
    help="Show this machine as last measured and stored (what optimize uses); measure nothing.",
)
@json_option
@db_option
def hardware(
    spec: str | None, export: Path | None, list_specs: bool, stored: bool, json_: bool, db_url: str | None
) -> None:
    """Measure this machine: devices, memory, matmul speed, and every transfer path (alpha, beta).

    The result is stored; a link costs alpha + bytes / beta seconds. With --spec, show a machine
    you do not have from its spec file (datasheet figures, nothing measured or stored). A spec file
    is JSON: its devices (key, kind, name, memory, and for a GPU peak_flops and memory_bandwidth),
    the links between them (alpha, beta), and each figure's source; --list-specs says where the
    shipped ones are to copy, and the README's "A spec file of your own" shows one.

    \b
    Examples:
      tuner hardware --stored                   what optimize prices with here, without measuring
      tuner hardware --export this-box.json     measure here, store, and write a spec file
      tuner hardware --spec this-box.json       show it anywhere, without measuring
      tuner hardware --spec 8xH100-80GB-nvlink  a spec shipped with the tuner (see --list-specs)
    """
    if spec is not None and export is not None:
        raise click.UsageError("--spec shows a spec file without measuring and --export measures: use one")
    if sum((list_specs, stored, spec is not None or export is not None)) > 1:
        raise click.UsageError("use one of --list-specs, --stored, and --spec or --export")
    if list_specs:
        names = tuner.list_specs()
        if json_:
            _print_json(names)
        else:
            width = max((len(name) for name in names), default=0)
            for name, title in names.items():
                click.echo(f"{name:<{width}}  {title}")
            click.echo(
                f"\nThe files are in {tuner.specs_folder()}: copy the nearest to describe your own machine."
            )
        return
    if stored:
        found = tuner.stored_hardware(db=db_url)
        if found is None:
            raise click.ClickException(
                "this machine was never measured into this database: tuner hardware measures it"
            )
        if json_:
            _print_json({"fingerprint": found.fingerprint, **to_dict(found)})
            return
        busy = f"; measured while busy: {found.busy}" if found.busy else ""
        _print_hardware(found, f"hardware fingerprint {found.fingerprint} (stored{busy})")
        return
    if spec is not None:
        described = tuner.read_spec(spec)
        if json_:
            _print_json({"fingerprint": described.fingerprint, **to_dict(described)})
            return
        _print_hardware(
            described, f"hardware fingerprint {described.fingerprint} (spec {spec}; nothing measured)"
        )
        return

    if export is not None and not export.resolve().parent.is_dir():
        # Checked before measuring: a typo should not cost the seconds a measurement takes.
        raise click.BadParameter(f"no folder {export.parent} to write into", param_hint="--export")
    if json_:
        measured = tuner.measure_hardware(db=db_url)
    else:
        with _stderr().status("measuring") as status:
            measured = tuner.measure_hardware(
                db=db_url, on_step=lambda step: status.update(f"measuring {step}")
            )
    if measured.busy:
        click.echo(
            f"note: measured while the machine was busy ({measured.busy}): the speeds may not be "
            "this machine's; stored flagged, run it again when the machine is quiet",
            err=True,
        )
    if export is not None:
        tuner.write_spec(measured, export)
    if json_:
        _print_json({"fingerprint": measured.fingerprint, **to_dict(measured)})
    else:
        _print_hardware(measured, f"hardware fingerprint {measured.fingerprint}")
    if export is not None:
        click.echo(f"spec written to {export} (read it anywhere: tuner hardware --spec {export})", err=True)


def _print_hardware(hardware: HardwareProfile, footer: str) -> None:
    from reports.terminal import hardware_tables
    from reports.terminal import host_note

    console = _stdout()
    for table in hardware_tables(hardware):
        console.print(table)
    console.print(host_note(hardware), highlight=False)
    console.print(footer)


@cli.command()
@click.argument("model", required=False)
@planning_options
@workload_options
@click.option(
    "--trials",
    default=300,
    show_default=True,
    type=click.IntRange(min=0),
    help="Optuna trials. The seeds (accelerate's maps and the optimum) run as trials first whatever the "
    "count (0: the seeds alone; --no-seed leaves them out).",
)
@click.option(
    "--timeout", type=click.FloatRange(min=0), metavar="SECONDS", help="Stop the search after this long."
)
@click.option(
    "--pin",
    "pins",
    multiple=True,
    type=PIN,
    help="Keep a unit, or every unit of a module (model.layers), on a device; repeatable.",
)
@click.option("--exclude", multiple=True, metavar="DEVICE", help="Never use this device; repeatable.")
@click.option(
    "--candidate",
    "candidates",
    multiple=True,
    type=DEVICE_MAP_FILE,
    help="A map of your own (JSON, as tuner export writes it; module prefixes allowed) to price and "
    "try first, so the winner is never worse than it; repeatable.",
)
@click.option(
    "--no-seed", is_flag=True, help="Do not start the search from accelerate's maps and the exact optimum."
)
@click.option(
    "--seed",
    "random_seed",
    type=click.IntRange(0, MAX_RANDOM_SEED),
    help="Random seed of the search, for repeatable runs.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Measure this machine and the model again, and search again, even if an identical run is stored.",
)
@click.option(
    "--resume",
    type=RUN,
    metavar="RUN|latest",
    help="Continue an interrupted run, or join a run another process is searching on a shared database "
    "(PostgreSQL) as one more worker; what is left out is the run's. The workers share the --trials budget.",
)
@click.option(
    "--repeats", default=5, show_default=True, type=click.IntRange(min=1), help="Timed runs per unit."
)
@click.option(
    "--measure",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    metavar="K",
    help="After the search, load the K fastest modelled maps and each of accelerate's strategies for real "
    "(from_pretrained, one load per distinct map), time them in interleaved rounds and compare their outputs "
    "with the model on one device; the fastest measured map that fits the limits wins. A map that fails to "
    "load, runs out of memory or gives other outputs is stored as infeasible with the reason. Needs the "
    "weights in MODEL and this machine (not --hardware). 0: the modelled winner.",
)
@click.option(
    "--measure-rounds",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    metavar="N",
    help="Timed calls per measured map, taken in rounds over all maps so that drift on a busy machine "
    "hits every map alike; each map's median counts.",
)
@click.option(
    "--calibrate",
    is_flag=True,
    help="Multiply each phase's predicted time (prefill, decode step) by the median of measured over "
    "predicted of the maps timed on this machine by validate or --measure, quiet ones only; the factors "
    "are shown with the run.",
)
@json_option
@db_option
def optimize(
    model: str | None,
    hardware_spec: str | None,
    max_memory: dict[str, int] | None,
    batch: int,
    seq: int,
    new_tokens: int | None,
    dtype: str,
    trust_remote_code: bool,
    trials: int,
    timeout: float | None,
    pins: Sequence[tuple[str, str]],
    exclude: Sequence[str],
    candidates: Sequence[dict[str, int | str]],
    no_seed: bool,
    random_seed: int | None,
    force: bool,
    resume: int | str | None,
    repeats: int,
    measure: int,
    measure_rounds: int,
    calibrate: bool,
    json_: bool,
    db_url: str | None,
) -> None:
    """Find the fastest device map of MODEL that fits, and store the run.

    Profiles the model (or reuses its stored profile), prices accelerate's own strategies, your
    --candidate maps and the exact optimum with the same cost model, then searches with Optuna.
    The winner is never worse than any of them. Ctrl-C keeps the trials so far; --resume RUN
    continues (MODEL, the workload, the hardware and the constraints left out are the run's;
    --trials and --timeout are this command's).
    With --measure K the best maps are then timed for real and the measured winner is stored (a
    stored run that was never measured is measured, not searched again).

    \b
    Examples:
      tuner optimize ./llama --seq 512 --new-tokens 128 --max-memory "cpu=8GiB"
      tuner optimize --resume 7                 continue run 7 as it was asked for
      tuner optimize ./llama --max-memory "cpu=8GiB" --measure 3
      tuner optimize ./llama-70b-config --hardware 8xH100-80GB-nvlink --dtype bfloat16
      tuner optimize ./llama --pin lm_head=1 --exclude disk --candidate my-map.json --json
    """
    if len(dict(pins)) != len(pins):
        repeated = next(unit for unit, _ in pins if sum(other == unit for other, _ in pins) > 1)
        raise click.BadParameter(f"{repeated} is pinned twice", param_hint="--pin")
    # with --resume, what is left out is the run's (tuner.optimize takes it from the run)
    request: dict[str, Any] = {
        name: value
        for name, value, parameter in (
            ("hardware", hardware_spec, "hardware_spec"),
            ("max_memory", max_memory, "max_memory"),
            ("batch", batch, "batch"),
            ("seq", seq, "seq"),
            ("new_tokens", new_tokens, "new_tokens"),
            ("dtype", dtype, "dtype"),
            ("pins", dict(pins), "pins"),
            ("exclude", exclude, "exclude"),
        )
        if resume is None or _given(parameter)
    }
    if resume is not None:
        stored = tuner.get_run(resume, db=db_url)
        model, resume = model or stored.model_name, stored.id
    if model is None:
        raise click.UsageError("Missing argument 'MODEL' (or --resume RUN, which names it).")
    with ProgressBar(enabled=not json_, first="starting") as progress:
        run = tuner.optimize(
            model,
            **request,
            trust_remote_code=trust_remote_code,
            candidates=candidates,
            trials=trials,
            timeout=timeout,
            seed_search=not no_seed,
            random_seed=random_seed,
            force=force,
            resume=resume,
            repeats=repeats,
            measure=measure,
            measure_rounds=measure_rounds,
            calibrate=calibrate,
            db=db_url,
            listener=progress,
        )
    measured = tuner.list_candidates(run.id, measured_only=True, db=db_url)
    if json_:
        document = {"reused": progress.reused, "searched": progress.searched, **_run_document(run)}
        _print_json({**document, "measured": [_candidate_document(c) for c in measured]})
        _refuse_winnerless(run)
        return
    from reports.terminal import run_tables

    console = _stdout()
    for table in run_tables(run, measured=measured):
        console.print(table)
    if "dtype" not in request:
        console.print(f"dtype {run.workload.dtype} (as run {resume} was tuned)")
    else:
        console.print(_dtype_line(dtype, run.workload.dtype))
    _refuse_winnerless(run)
    # by its id: `latest` is the run created last, which a run answered from the database is not
    export = f"export it with: tuner export {run.id} -o map.json"
    if progress.reused and progress.measured:
        console.print(
            f"run {run.id} from the database, {progress.measured} of its maps measured now; {export}"
        )
    elif progress.reused:
        console.print(f"run {run.id} from the database (--force searches again); {export}")
    else:
        console.print(f"stored as run {run.id}; {export}")
    if measure and measured and all(candidate.measured_s is None for candidate in measured):
        raise click.ClickException(
            f"every measured map failed (run {run.id} keeps each reason: tuner show {run.id}); "
            f"first: {measured[0].name}: {measured[0].measure_error}"
        )


def _refuse_winnerless(run: tuner.Run) -> None:
    """A search without seeds whose trials all broke the limits completes with no map to export:
    say so, and which of the maps it left out would have fit, rather than hint at `export`."""
    if run.winner is not None:
        return
    fitting = [candidate.name for candidate in run.baselines if candidate.feasible and not candidate.breaks]
    hint = (
        f"; {', '.join(fitting)} fit{'s' if len(fitting) == 1 else ''}: leave out --no-seed"
        if fitting
        else ""
    )
    raise click.ClickException(
        f"run {run.id} found no map that fits in its {run.trials} trials, nothing to export{hint}"
    )


@cli.command()
@click.argument("map_file", metavar="MAP.json", type=MAP_FILE_WITH_LIMITS)
@click.argument("model")
@planning_options
@workload_options
@click.option(
    "--repeats", default=5, show_default=True, type=click.IntRange(min=1), help="Timed runs per unit."
)
@json_option
@db_option
def price(
    map_file: MapArguments,
    model: str,
    hardware_spec: str | None,
    max_memory: dict[str, int] | None,
    batch: int,
    seq: int,
    new_tokens: int | None,
    dtype: str,
    trust_remote_code: bool,
    repeats: int,
    json_: bool,
    db_url: str | None,
) -> None:
    """Price your own map of MODEL beside accelerate's strategies and the exact optimum.

    MAP.json is a map as from_pretrained takes it: module names (prefixes such as "model.layers",
    or "" for the whole model) to devices (0, 1, "cpu", "disk"). Every unit must be covered and
    none split. The same cost model prices all maps; nothing is searched or stored but the profile.
    The limits and dtype of a file from `tuner export --with-max-memory` apply unless --max-memory
    or --dtype is given.

    \b
    Examples:
      tuner price my-map.json ./llama --max-memory "0=20GiB,cpu=64GiB" --seq 512
      tuner price my-map.json ./llama-70b-config --hardware 2xA100-80GB-nvlink --dtype bfloat16
    """
    if click.get_current_context().get_parameter_source("dtype") is ParameterSource.DEFAULT:
        dtype = map_file.get("dtype", dtype)  # the file's, from export --with-max-memory
    planned_limits = max_memory is None and "max_memory" in map_file
    with ProgressBar(enabled=not json_, first="starting") as progress:
        try:
            comparison = tuner.compare(
                model,
                map_file["device_map"],
                hardware=hardware_spec,
                batch=batch,
                seq=seq,
                new_tokens=new_tokens,
                dtype=dtype,
                max_memory=map_file["max_memory"] if planned_limits else max_memory,
                repeats=repeats,
                trust_remote_code=trust_remote_code,
                db=db_url,
                listener=progress,
            )
        except ConstraintError as refused:
            if not (planned_limits and str(refused).startswith("max_memory")):
                raise
            # the limits came from the file (export --with-max-memory), not from the command line
            raise ConstraintError(
                f"the map file's {refused}; --max-memory prices it under other limits"
            ) from None
    others = [*comparison.strategies, *([comparison.optimum] if comparison.optimum else [])]
    if json_:
        document = {
            "workload": to_dict(comparison.workload),
            "yours": _candidate_document(comparison.candidate),
            "others": [_candidate_document(c) for c in others],
        }
        _print_json(document)
        return
    from reports.terminal import price_table

    workload = comparison.workload.describe(comparison.inputs)
    _stdout().print(price_table(comparison.candidate, others, model=model, workload=workload))


@cli.command()
@click.argument("run", type=RUN)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, allow_dash=True),
    help="Write to FILE (-: stdout, as without -o).",
)
@click.option(
    "--with-max-memory",
    is_flag=True,
    help="Write {device_map, max_memory, dtype} (the limits the run was planned against: those asked "
    "for, else what the devices had free; the dtype it was priced in) instead of the bare map.",
)
@click.option(
    "--server",
    metavar="URL",
    envvar="TUNER_SERVER",
    help="Fetch the map from a tuner serve at URL instead of the database (no torch needed) "
    "[env TUNER_SERVER]; TUNER_API_TOKEN is sent when set.",
)
@db_option
def export(
    run: int | str, output: str | None, with_max_memory: bool, server: str | None, db_url: str | None
) -> None:
    """Write a run's winning map as JSON that from_pretrained takes as it is.

    \b
      tuner export latest -o map.json
      tuner export 7 --server http://tuner.internal:8765 -o map.json
      model = AutoModelForCausalLM.from_pretrained(path, device_map=json.load(open("map.json")))

    A file written --with-max-memory names GPUs as text ("0"), as JSON must, which accelerate
    refuses: tuner.read_map gives them back as ints.

    \b
      tuner export latest --with-max-memory -o planned.json
      model = AutoModelForCausalLM.from_pretrained(path, **tuner.read_map("planned.json"))
    """
    if server is not None:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always", tuner.UnfinishedRunWarning)
            document = tuner.fetch_map(run, server=server, with_max_memory=with_max_memory)
        for warning in warned:
            if issubclass(warning.category, tuner.UnfinishedRunWarning):
                click.echo(f"warning: {warning.message}", err=True)
            else:
                warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        shown = f"{server.rstrip('/')}: run {run}"
    else:
        found = tuner.get_run(run, db=db_url)
        if found.winner is None:
            complete = tuner.list_runs(status="complete", limit=1, db=db_url)
            hint = f"; the newest complete run is {complete[0].id}" if run == "latest" and complete else ""
            raise click.ClickException(found.no_map + hint)
        if found.unfinished:
            click.echo(f"warning: {found.unfinished}", err=True)
        document = found.exported(with_max_memory=with_max_memory)
        shown = f"run {found.id} ({found.model_name})"  # `latest` may be another model's run
    text = json.dumps(document, indent=2) + "\n"
    if output is None or output == "-":
        click.echo(text, nl=False)
        return
    _write(output, text)
    units = len(document["device_map"] if with_max_memory else document)
    click.echo(f"{shown}: map of {units} units written to {output}", err=True)


@cli.command()
@click.option("--model", metavar="TEXT", help="Only runs whose model name contains TEXT.")
@click.option(
    "--hardware", "hardware_name", metavar="TEXT", help="Only runs whose hardware name contains TEXT."
)
@click.option(
    "--status",
    type=click.Choice([status.value for status in tuner.RunStatus]),
    help="Only runs with this status (a failed run shows why, shortened; whole in --json or tuner show).",
)
@click.option(
    "--limit", default=20, show_default=True, type=click.IntRange(min=1), help="Show at most this many runs."
)
@json_option
@db_option
def history(
    model: str | None,
    hardware_name: str | None,
    status: str | None,
    limit: int,
    json_: bool,
    db_url: str | None,
) -> None:
    """Past tuning runs, newest first; a run that cannot be read is named on stderr.

    \b
      tuner history --model llama --status complete
      tuner history --status failed --json
    """
    found = tuner.run_history(model=model, hardware=hardware_name, status=status, limit=limit, db=db_url)
    runs = list(found.runs)
    for why in found.unreadable.values():
        click.echo(f"warning: {why}; left out of the list", err=True)
    if json_:
        _print_json([_run_document(run) for run in runs])
        return
    from reports.terminal import history_table

    if not runs and not found.unreadable:
        asked = (("model", model), ("hardware", hardware_name), ("status", status))
        filters = " ".join(f"--{name} {value}" for name, value in asked if value)
        empty = f"no run matches {filters}" if filters else "no runs yet: tuner optimize MODEL stores one"
        click.echo(empty, err=True)
        return
    console = _stdout()
    console.print(history_table(runs, width=console.width))


@cli.command()
@click.argument("run", type=RUN)
@json_option
@db_option
def cancel(run: int | str, json_: bool, db_url: str | None) -> None:
    """Withdraw a run no worker is tuning: a queued one (POST /v1/runs) is never taken, an
    interrupted one never resumed. It is marked failed ("cancelled ...") and keeps what it found.

    \b
      tuner cancel 7
      curl -X POST -H "Authorization: Bearer $TUNER_API_TOKEN" http://tuner.internal:8765/v1/runs/7/cancel
    """
    found = tuner.cancel_run(tuner.get_run(run, db=db_url).id, db=db_url)
    if json_:
        _print_json(_run_document(found))
        return
    click.echo(f"run {found.id} ({found.model_name}): {found.error}")


@cli.command()
@click.argument("run", type=RUN)
@json_option
@db_option
def show(run: int | str, json_: bool, db_url: str | None) -> None:
    """One run in full: settings, winner, accelerate's strategies, the exact optimum, and the maps
    measured for real (`optimize --measure`) with their latency or why they failed."""
    found = tuner.get_run(run, db=db_url)
    measured = tuner.list_candidates(found.id, measured_only=True, db=db_url)
    if json_:
        measured_documents = [_candidate_document(c) for c in measured]
        _print_json({**_run_document(found), "measured": measured_documents})
        return
    from reports.terminal import run_tables

    console = _stdout()
    for table in run_tables(found, placements=True, measured=measured):
        console.print(table)


@cli.command()
@click.argument("run", type=RUN)
@click.option(
    "-o",
    "--output",
    default="report.html",
    show_default=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="HTML file (-: stdout).",
)
@db_option
def report(run: int | str, output: str, db_url: str | None) -> None:
    """Write one self-contained HTML report of a run: placement, memory against limits, per-unit
    costs, the comparison with accelerate and the exact optimum, and the search history.

    It needs no network to view.

    \b
      tuner report latest -o report.html
      tuner report 3 -o run-3.html
    """
    found = tuner.get_run(run, db=db_url)
    html = tuner.report_html(found.id, db=db_url)
    if output == "-":
        click.echo(html, nl=False)
        return
    _write(output, html)
    click.echo(f"run {found.id}: report written to {output}", err=True)


@cli.command()
@click.argument("source", metavar="RUN|MAP.json")
@click.argument("model", required=False)
@click.option("--batch", type=click.IntRange(min=1), help="Prompts per call. [default: the run's]")
@click.option("--seq", type=click.IntRange(min=1), help="Prompt length. [default: the run's]")
@click.option("--new-tokens", type=click.IntRange(min=0), help="Tokens to generate. [default: the run's]")
@click.option(
    "--dtype",
    type=click.Choice(list(DTYPE_CHOICES)),
    help="[default: the run's, or the map file's, else auto: what from_pretrained loads without a dtype]",
)
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1), help="Timed calls.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code from its folder.")
@json_option
@db_option
def validate(
    source: str,
    model: str | None,
    batch: int | None,
    seq: int | None,
    new_tokens: int | None,
    dtype: str | None,
    repeats: int,
    trust_remote_code: bool,
    json_: bool,
    db_url: str | None,
) -> None:
    """Load a map for real and check it: same outputs as one device, measured latency and memory.

    RUN is a stored run (its winner and workload; the measurement is stored on the run), MAP.json
    a map as `tuner export` writes it. MODEL is the folder with the weights (for a RUN, the one it
    was tuned for unless given). Peak memory is held against the run's limits, or those of a file
    from `tuner export --with-max-memory` (loaded in its dtype unless --dtype). It exits 1 unless
    the map both ran with the same outputs ("ok" in --json) and stayed within the limits ("fits";
    null when it did not run).

    \b
      tuner validate latest
      tuner validate map.json ./my-llama --seq 128 --new-tokens 32
    """
    from dataclasses import asdict

    context = click.get_current_context()
    argument = next(param for param in context.command.params if param.name == "source")
    if source.endswith(".json"):
        map_file = MAP_FILE_WITH_LIMITS.convert(source, argument, context)
        target: dict[str, Any] = {
            "device_map": map_file["device_map"],
            "max_memory": map_file.get("max_memory"),
        }
        dtype = dtype or map_file.get("dtype")  # the file's, from export --with-max-memory
    else:
        target = {"run": RUN.convert(source, argument, context)}
        if model is None:
            model = tuner.get_run(target["run"], db=db_url).model_name
    if model is None:
        raise click.UsageError("give MODEL, the folder with the weights, after MAP.json")
    outcome = tuner.validate(
        model,
        **target,
        batch=batch,
        seq=seq,
        new_tokens=new_tokens,
        dtype=dtype,
        repeats=repeats,
        trust_remote_code=trust_remote_code,
        db=db_url,
    )
    result = outcome.validation
    if outcome.seq_note:
        click.echo(f"note: {outcome.seq_note}", err=True)
    if json_:
        prefill, step = outcome.ratios if outcome.ratios is not None else (None, None)
        document = {
            "run_id": outcome.run_id,
            **asdict(result),
            "predicted_s": outcome.predicted_s,
            "predicted_peak_memory": outcome.predicted_memory,
            "busy": outcome.busy,
            "kept_quiet_s": outcome.kept_quiet,
            "planned_elsewhere": outcome.planned_elsewhere,
            "limits": outcome.limits,
            "over_limits": sorted(outcome.over_limits),
            "fits": outcome.fits,
            "ratios": None if outcome.ratios is None else {"prefill": prefill, "decode_step": step},
        }
        _print_json(document)
    else:
        _print_validation(outcome)
    if not outcome.ok:
        raise click.ClickException(f"the map failed validation: {result.reason}")
    if outcome.fits is False:
        # Right outputs, but a map that does not fit its limits is no answer to them.
        devices = ", ".join(sorted(outcome.over_limits))
        raise click.ClickException(f"the map's peak memory went over the limit on {devices}")


def _print_validation(outcome: tuner.ValidationOutcome) -> None:
    from reports.terminal import format_ratios
    from reports.terminal import format_seconds
    from tuner.core.sizes import format_bytes

    result, predicted = outcome.validation, outcome.predicted_s
    console = _stdout()
    verdict = "[green]ok[/green]" if result.ok else f"[red]failed[/red]: {result.reason}"
    if outcome.over_limits:
        devices = ", ".join(sorted(outcome.over_limits))
        verdict += f", [yellow]but its peak memory went over the limit on {devices}[/yellow]"
    console.print(f"validation: {verdict}")
    if outcome.workload is not None:  # the run's, or the defaults: a map file names no workload
        used = outcome.workload
        console.print(
            f"  loaded in {used.dtype}, run with batch {used.batch}, {used.prompt(outcome.inputs)}, "
            f"{used.new_tokens} new tokens"
        )
    if result.max_abs_diff is not None:
        console.print(f"  logits max |diff| from one device: {result.max_abs_diff:.2e}")
    elif result.ok:
        console.print("  outputs not compared: the whole model does not fit one device's free memory")
    if result.tokens_equal is not None:
        console.print(f"  greedy tokens equal: {'yes' if result.tokens_equal else 'no'}")
    if result.latency_s is not None:
        line = f"  measured latency: {format_seconds(result.latency_s)}"
        if predicted:
            ratio = result.latency_s / predicted
            line += f" (predicted {format_seconds(predicted)}: measured {ratio:.2f}x that)"
        console.print(line)
    if outcome.ratios is not None:
        console.print(f"  measured over predicted: {format_ratios(outcome.ratios)}")
    if outcome.planned_elsewhere:
        console.print(
            f"  run {outcome.run_id} was planned for {outcome.planned_elsewhere}: timed here, neither held "
            "against its prediction nor stored"
        )
    if outcome.busy:
        console.print(f"  timed while the machine was busy ({outcome.busy}): not used to calibrate")
    if outcome.kept_quiet is not None:
        console.print(
            f"  run {outcome.run_id} keeps its measurement from a quiet machine, "
            f"{format_seconds(outcome.kept_quiet)}"
        )
    over = outcome.over_limits
    for device, nbytes in result.peak_memory.items():
        limit = outcome.limits.get(device)
        line = f"  peak memory {device}: {format_bytes(nbytes)}"
        if device in outcome.predicted_memory:
            line += f" (predicted {format_bytes(outcome.predicted_memory[device])})"
        line += "" if limit is None else f" of {format_bytes(limit)} allowed"
        line += f" [red]OVER by {format_bytes(over[device])}[/red]" if device in over else ""
        console.print(line)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(min=0, max=65535))
@click.option("--access-log", is_flag=True, help="Log every request on stderr.")
@db_option
def serve(host: str, port: int, access_log: bool, db_url: str | None) -> None:
    """Serve the stored runs over HTTP: their maps, reports and the best map for a request.

    Reads are open to this machine; from elsewhere, and for every write, clients send
    "Authorization: Bearer $TUNER_API_TOKEN" (/healthz is open to all, for health checks).
    Serving on an address other machines reach needs TUNER_API_TOKEN set. The OpenAPI document
    is at /openapi.json, the runs page at /.

    \b
      tuner serve --db postgresql://tuner@db/tuner
      curl "http://127.0.0.1:8765/v1/best?model=meta-llama/Llama-2-7b-hf&hardware=1xA10G-24GB"
    """
    import uvicorn

    from tuner.service import check_binding
    from tuner.service import create_app

    token = os.environ.get("TUNER_API_TOKEN") or None
    if host.startswith("[") and host.endswith("]"):  # an IPv6 address as a URL writes it
        host = host[1:-1]
    check_binding(host, token)
    listening = _listen(host, port)
    port = listening.getsockname()[1]  # the one the system chose for --port 0
    app = create_app(db_url, token=token)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving {tuner.database_url(db_url)} on http://{shown}:{port}/ (Ctrl-C stops)", err=True)
    # uvicorn logs each request at info, to stdout: below that level --access-log would print
    # nothing, and stderr is where this command says everything
    import copy

    from uvicorn.config import LOGGING_CONFIG

    logging = copy.deepcopy(LOGGING_CONFIG)
    logging["handlers"]["access"]["stream"] = "ext://sys.stderr"
    level = "info" if access_log else "warning"
    from uvicorn.config import STARTUP_FAILURE

    server = uvicorn.Server(uvicorn.Config(app, access_log=access_log, log_level=level, log_config=logging))
    with listening:
        try:
            server.run(sockets=[listening])
        except KeyboardInterrupt:  # the stop signal, raised again by uvicorn once it stopped serving
            pass
    if not server.started:  # as uvicorn.run ends: the app's start-up failed, and uvicorn said why
        sys.exit(STARTUP_FAILURE)


@cli.command()
@click.option(
    "--concurrency",
    default=1,
    show_default=True,
    type=click.IntRange(min=1, max=64),
    help="Runs tuned at once, each by a worker process of its own.",
)
@click.option(
    "--poll",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    metavar="SECONDS",
    help="How long to wait before looking at an empty queue again.",
)
@click.option("--once", is_flag=True, help="Stop once the queue is empty instead of waiting for more.")
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Run the code a model's repository ships (from_pretrained's flag) for every run this worker "
    "takes. Requests cannot ask for it: anyone holding the service's token could then run code on "
    "the workers. Use it only when every model that may be queued is trusted.",
)
@db_option
def worker(concurrency: int, poll: float, once: bool, trust_remote_code: bool, db_url: str | None) -> None:
    """Tune the runs queued through the service (POST /v1/runs), oldest first.

    Start as many workers as you like, on this machine or others that reach the same database
    (PostgreSQL) and the models: each queued run is taken by one worker. A worker that finds
    nothing queued joins the search of a run other workers are tuning while its study has trials
    left: they share the run's --trials budget (exactly), and the last of them to end completes
    the run. A worker that dies leaves its run to the others once the run's lease (30 s)
    expires; one that is stopped (Ctrl-C, SIGTERM) marks its run interrupted; either way another
    worker resumes the run where it stood. A worker that loses its database (a restart, a network
    drop) says so and tries again, waiting up to a minute between tries.

    \b
      tuner worker --db postgresql://tuner@db/tuner --concurrency 2
    """
    if concurrency > 1:
        if not once:
            _say_taking(f"{concurrency} workers", db_url)
        _worker_processes(concurrency, poll, once, trust_remote_code, db_url)
        return
    from reports.terminal import format_seconds
    from tuner.cli.progress import WorkerLines

    parent = _stop_with_parent()
    worked = False
    retry_s = 0.0  # how long the worker waits for the database before it tries again
    with tuner.open_database(db_url) as database:
        if not once and parent is None:  # one started by `--concurrency` is announced by it
            _say_taking("worker", db_url)
        while True:
            if parent is not None and os.getppid() != parent:
                click.echo("worker stopped: the worker that started it is gone", err=True)
                return
            lines = WorkerLines()
            try:
                if retry_s:  # said at once: a run taken next may be tuned for minutes
                    tuner.list_runs(limit=1, db=database)
                    click.echo(f"worker: {tuner.database_url(db_url)} answers again", err=True)
                    retry_s = 0.0
                run = tuner.tune_queued(db=database, listener=lines, trust_remote_code=trust_remote_code)
            except RunInterrupted as stop:
                click.echo(
                    f"interrupted: run {stop.run_id} keeps its {stop.trials} trials; a worker resumes it",
                    err=True,
                )
                raise click.exceptions.Exit(exit_status(_received_signal())) from None
            except Exception as error:
                if _received_signal() is not None:
                    # Ctrl-C or SIGTERM while looking for work, turned into another error on its
                    # way up (the driver's, a lazy import's): no run is held, as RunInterrupted says.
                    click.echo("worker stopped", err=True)
                    return
                if once or isinstance(error, SchemaOutdatedError) or not isinstance(error, StorageError):
                    raise
                # The database went away (a restart, a network drop): a run this worker held is
                # resumed once its lease expires, by this worker or another.
                retry_s = min(_MOST_RETRY_S, max(poll, 2 * retry_s))
                dropped = f"run {lines.taken} left to resume when its lease expires: " if lines.taken else ""
                click.echo(f"worker: {dropped}{_one_line(error)}; trying again in {retry_s:g} s", err=True)
                if not _rested(retry_s):
                    return
                continue
            except KeyboardInterrupt:  # while looking for work, or once its run was stored: none held
                click.echo("worker stopped", err=True)
                return
            if run is None:
                if once:
                    if not worked:  # else a typo in --db would read as an empty queue
                        click.echo(f"nothing queued in {tuner.database_url(db_url)}", err=True)
                    return
                if not _rested(poll):
                    return
                continue
            worked = True
            if run.error or run.winner is None:
                click.echo(f"run {run.id}: {run.status.value}: {run.error or 'no map fits'}", err=True)
                continue
            latency = run.winner.prediction.latency_s if run.winner.prediction is not None else None
            speed = f", {format_seconds(latency)} predicted" if latency is not None else ""
            click.echo(f"run {run.id}: {run.status.value}, winner {run.winner.name}{speed}", err=True)


def _say_taking(workers: str, db_url: str | None) -> None:
    """Say, before any run is taken, where the waiting workers look: a worker that has found
    nothing prints nothing else, and a wrong --db would look like an empty queue."""
    click.echo(f"{workers} taking queued runs from {tuner.database_url(db_url)} (Ctrl-C stops)", err=True)


def _rested(seconds: float) -> bool:
    """Whether the worker waited `seconds` out; a Ctrl-C or SIGTERM meanwhile stops it, saying so."""
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        click.echo("worker stopped", err=True)
        return False
    return True


def _received_signal() -> int | None:
    """Ctrl-C's or SIGTERM's number when one came while the command ran (`Interrupt.received`),
    which a library may have turned into another error on its way up; None when none came."""
    handlers = (signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM))
    received = [getattr(handler, "received", None) for handler in handlers]
    return next((number for number in received if number is not None), None)


def _given(parameter: str) -> bool:
    """Whether the command line (or its environment) gave `parameter`, not its default."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source(parameter)
    return source is not None and source is not ParameterSource.DEFAULT


def _listen(host: str, port: int) -> socket.socket:
    """The socket the service listens on, bound before it says where it serves: an address it
    cannot take (a port in use) is refused in one line, and port 0 is the free one the system
    chose."""
    # an IPv6 address (::1) is no IPv4 one: the socket's family follows the address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise click.ClickException(f"cannot listen on {host}:{port}: {reason}") from None


#: Set by `worker --concurrency` for the workers it starts: its own process id.
_WORKER_PARENT = "TUNER_WORKER_PARENT"


def _stop_with_parent() -> int | None:
    """For a worker that `worker --concurrency` started: have the kernel send it SIGTERM (as a
    stop) when that process dies, a kill -9 included, where it would go on taking runs, adopted
    by init; its id, for the worker to look at between runs where there is no such signal (not
    Linux). None for a worker started by hand."""
    parent = os.environ.get(_WORKER_PARENT)
    if not parent or not parent.isdigit():
        return None
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # it died before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)
    return int(parent)


def _worker_processes(
    count: int, poll: float, once: bool, trust_remote_code: bool, db_url: str | None
) -> None:
    """`count` workers, each a process of its own (in its own session, so that a Ctrl-C in the
    terminal reaches them once, through this one); a stop is passed on to every one, and each
    stops when this process dies."""
    import subprocess

    args = [sys.executable, "-m", "tuner", "worker", "--poll", str(poll), *(["--once"] if once else [])]
    args += ["--trust-remote-code"] if trust_remote_code else []
    env = {**os.environ, **({"TUNER_DB": db_url} if db_url else {})}  # a password stays out of `ps`
    env[_WORKER_PARENT] = str(os.getpid())
    processes = [subprocess.Popen(args, env=env, start_new_session=True) for _ in range(count)]
    try:
        codes = [process.wait() for process in processes]
    except KeyboardInterrupt:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = [process.wait() for process in processes]
    failed = [code for code in codes if code != 0]
    if failed:
        stopped = [code for code in failed if code in STOPPED_STATUSES]
        raise click.exceptions.Exit((stopped or failed)[0])


@cli.group()
def db() -> None:
    """The database: where it is and its schema."""


@db.command()
@db_option
def upgrade(db_url: str | None) -> None:
    """Bring the database schema up to this version of the tuner."""
    done = tuner.upgrade_database(db_url)
    if not done.before:
        click.echo(f"{done.url}: schema created (revision {done.revision})")
    elif done.before == (done.revision,):
        click.echo(f"{done.url}: schema is current (revision {done.revision})")
    else:
        click.echo(f"{done.url}: schema upgraded from revision {', '.join(done.before)} to {done.revision}")


@db.command(name="path")
@db_option
def db_path(db_url: str | None) -> None:
    """Print the URL of the database in use (its password hidden)."""
    click.echo(tuner.database_url(db_url))


def _run_document(run: Run) -> dict[str, Any]:
    """A run as `to_dict` writes it, each candidate as `_candidate_document`."""
    document = to_dict(run)
    document["winner"] = None if run.winner is None else _candidate_document(run.winner)
    document["baselines"] = [_candidate_document(c) for c in run.baselines]
    return document


def _candidate_document(candidate: Candidate) -> dict[str, Any]:
    """A candidate as `to_dict` writes it, with what the tables show beside it: the predicted
    generate latency, whether the map answers the request (fits, keeps the pins, did not fail
    when run), and the map as ``from_pretrained(device_map=...)`` takes it."""
    prediction = candidate.prediction
    return {
        **to_dict(candidate),
        "latency_s": None if prediction is None else prediction.latency_s,
        "feasible": candidate.feasible,
        "hf_device_map": candidate.device_map.to_hf(),
    }


def _dtype_line(asked: str, used: str) -> str:
    """Which dtype the model was planned in, and why: asked for, or the checkpoint's own."""
    why = (
        "auto: what from_pretrained loads without one; --dtype to choose" if asked == AUTO_DTYPE else "asked"
    )
    return f"dtype {used} ({why})"


def _write(output: str, text: str) -> None:
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from exc


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def _stdout() -> Console:
    from rich.console import Console

    console = Console()
    # Piped into a file or another program, a table must not be cut to an assumed 80 columns.
    return console if console.is_terminal else Console(width=240)


class _Output:
    """What this command printed: with --json, an error is a document of its own on stdout,
    unless the command's document is there already (validate's exit 1 after its result)."""

    json_printed = False


_output = _Output()


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2))
    _output.json_printed = True


def _fail(message: str, status: int, args: list[str]) -> NoReturn:
    """One line on stderr and the exit `status`; with --json, also ``{"error": ...}`` on stdout
    (as the service answers), so that a script reading stdout gets JSON either way."""
    click.echo(f"error: {message}", err=True)
    _json_error(message, args)
    sys.exit(status)


def _json_error(message: str, args: list[str], **facts: object) -> None:
    """The error as the JSON document a script reads on stdout; `facts` are fields it needs
    beside the sentence (the run an interrupt stopped)."""
    if "--json" in args and not _output.json_printed:
        click.echo(json.dumps({"error": message, **facts}, indent=2))


def run(args: list[str], interrupt: Interrupt) -> None:
    """Run the command `args` names and turn every error into one line on stderr, an interrupt
    (Ctrl-C, or SIGTERM: what `timeout`, systemd and Kubernetes send) into one line that names
    the run it stopped and the exit status 130 (143 for SIGTERM); `interrupt` handles both
    signals meanwhile."""
    debug = "--debug" in args
    _output.json_printed = False
    try:
        # Without standalone mode click returns the code a command exits with (`Exit`), or None.
        code = cli.main(args=args, prog_name="tuner", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.NoArgsIsHelpError as bare:  # `tuner`, `tuner db`: the help asked for
        click.echo(bare.ctx.get_help() if bare.ctx is not None else bare.format_message())
        sys.exit(0)
    except (click.Abort, KeyboardInterrupt) as stop:
        # click turns an interrupt into Abort, the interrupt its cause (`optimize` raises
        # RunInterrupted, which names the run).
        cause = stop.__cause__ if isinstance(stop, click.Abort) else stop
        _stopped(interrupt, cause if isinstance(cause, RunInterrupted) else None, args)
    except Exception as exc:
        if interrupt.received is not None and not debug:
            _stopped(interrupt, None, args)  # what the interrupt became on its way up
        if isinstance(exc, click.ClickException):  # a usage error: where it was raised is no news
            message = exc.format_message()
            if isinstance(exc, click.NoSuchOption) and exc.option_name == "--db" and exc.ctx is not None:
                if exc.ctx.command is cli:  # click would suggest --debug
                    message = "--db goes after the command (tuner history --db URL), or set TUNER_DB"
            if isinstance(exc, click.NoSuchOption) and exc.option_name == "--debug":
                message = "--debug goes before the command (tuner --debug show 7)"
            negative = _negative_run_id(exc, args)
            if negative is not None:
                message = f"no run has id {negative}: run ids count from 1 (tuner history lists them)"
            _fail(message, exc.exit_code, args)
        if debug:
            raise
        if isinstance(exc, (TunerError, ValueError)):
            _fail(_one_line(exc), _EXIT_ERROR, args)
        # the last line of defence: a user never sees a traceback by default
        _fail(f"unexpected {type(exc).__name__}: {_one_line(exc)} (--debug shows where)", _EXIT_ERROR, args)


def _negative_run_id(error: click.ClickException, args: list[str]) -> str | None:
    """The negative number given for a run (``tuner show -1``), which click reads as options
    (``-1``, and ``-12`` as ``-1 -2``); None for any other error, or a command that takes no run."""
    if not isinstance(error, click.NoSuchOption) or error.ctx is None:
        return None
    takes_a_run = any(
        isinstance(param, click.Argument) and param.type is RUN for param in error.ctx.command.params
    )
    numbers = [arg for arg in args if re.fullmatch(r"-\d+", arg)]
    return numbers[0] if takes_a_run and numbers else None


def _stopped(interrupt: Interrupt, stop: RunInterrupted | None, args: list[str]) -> NoReturn:
    interrupt.settle()
    message = _interrupted(stop) if stop is not None else "interrupted"
    click.echo(message, err=True)
    stopped = {} if stop is None or stop.run_id is None else {"run_id": stop.run_id, "trials": stop.trials}
    _json_error(message, args, **stopped)
    sys.exit(exit_status(interrupt.received))


def _interrupted(stop: RunInterrupted) -> str:
    if stop.run_id is None or stop.measuring:
        return str(stop).replace("the same call", "the same command")
    # --resume takes its budget from the command, as any optimize does: it is said with it
    budget = f" --trials {stop.asked}" if stop.asked is not None else ""
    return (
        f"interrupted: run {stop.run_id} keeps its {stop.trials} trials; "
        f"the same command, or tuner optimize --resume {stop.run_id}{budget}, continues it"
    )


#: A password in a URL (``scheme://user:password@host``), as a driver's message may quote it.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s]*@")


def _one_line(exc: BaseException) -> str:
    text = _URL_PASSWORD.sub(r"\1:***@", " ".join(str(exc).split()))
    return text or type(exc).__name__
