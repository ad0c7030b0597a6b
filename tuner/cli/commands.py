"""The `tuner` command line: nouns and verbs, `--json` for scripts, one-line errors.

Every failure the library raises on purpose is a TunerError; here, and only here, it becomes one
line on stderr and a non-zero exit. `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import click

from tuner import __version__
from tuner.core.devices import to_hf
from tuner.core.domain import DTYPE_BYTES
from tuner.core.exceptions import TunerError
from tuner.workflows import OptimizeListener

if TYPE_CHECKING:
    from rich.console import Console

    from storage import Store
    from tuner.core.domain import Candidate
    from tuner.core.domain import HardwareProfile
    from tuner.core.domain import Run

__all__ = ["cli", "main"]

_EXIT_ERROR = 1
_EXIT_INTERRUPTED = 130


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def db_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--db URL`` with the ``TUNER_DB`` fallback, shared by every command that stores."""
    return click.option(
        "--db",
        "db_url",
        envvar="TUNER_DB",
        metavar="URL",
        help="SQLAlchemy URL of the database [env TUNER_DB; default: a SQLite file in your data folder].",
    )(command)


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("json_", "--json", is_flag=True, help="Print one JSON document instead of tables.")(
        command
    )


def _open_store(db_url: str | None) -> Store:
    from storage import Store
    from storage import default_url

    return Store(db_url or default_url())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tuner")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Find where each part of a model should live (GPUs, CPU RAM, disk) to run fastest while it fits.

    \b
    Start here:
      tuner hardware                 what this machine has, and how fast it moves bytes
      tuner profile ./my-model       per-unit time, memory and KV cache of a model
    """
    ctx.obj = {"debug": debug}


def workload_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--batch, --seq, --new-tokens, --dtype and --trust-remote-code, shared by profile and optimize."""
    options = [
        click.option(
            "--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Prompts per call."
        ),
        click.option(
            "--seq",
            default=128,
            show_default=True,
            type=click.IntRange(min=1),
            help="Prompt length in tokens.",
        ),
        click.option(
            "--new-tokens",
            default=None,
            type=click.IntRange(min=0),
            help="Tokens to generate (one decode step each, at context SEQ). [default: 32 for models that "
            "generate, else 0]",
        ),
        click.option("--dtype", default="float32", show_default=True, type=click.Choice(list(DTYPE_BYTES))),
        click.option(
            "--trust-remote-code", is_flag=True, help="Allow the model's own Python code from its folder."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


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
    from tuner.core.codec import to_dict
    from tuner.workflows import profile_model

    store = _open_store(db_url)
    with _Progress(enabled=not json_, first="tracing the model") as progress:
        outcome = profile_model(
            model,
            store,
            batch=batch,
            seq=seq,
            new_tokens=new_tokens,
            dtype=dtype,
            repeats=repeats,
            full=full,
            force=force,
            trust_remote_code=trust_remote_code,
            devices=devices,
            listener=progress,
        )
    if json_:
        document = {"profile_id": outcome.profile_id, "reused": outcome.reused, **to_dict(outcome.profile)}
        click.echo(json.dumps(document, indent=2))
        return
    from reports.terminal import format_seconds
    from reports.terminal import profile_table

    console = _stdout()
    console.print(profile_table(outcome.profile))
    shared = len({p.unit for p in outcome.profile.units if p.shared})
    where = (
        f"from the database (profile {outcome.profile_id}; --force measures again)"
        if outcome.reused
        else f"measured in {format_seconds(outcome.profile.seconds)}, stored as profile {outcome.profile_id}"
    )
    console.print(
        f"{len(outcome.profile.graph.units)} units ({shared} share an identical unit's measurement); {where}"
    )
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
@json_option
@db_option
def hardware(
    spec: str | None, export: Path | None, list_specs: bool, json_: bool, db_url: str | None
) -> None:
    """Measure this machine: devices, memory, matmul speed, and every transfer path (alpha, beta).

    The result is stored; a link costs alpha + bytes / beta seconds. With --spec, show a machine
    you do not have from its spec file (datasheet figures, nothing measured or stored).

    \b
    Examples:
      tuner hardware --export this-box.json     measure here, store, and write a spec file
      tuner hardware --spec this-box.json       show it anywhere, without measuring
      tuner hardware --spec 8xH100-80GB-nvlink  a spec shipped with the tuner (see --list-specs)
    """
    if spec is not None and export is not None:
        raise click.UsageError("--spec shows a spec file without measuring and --export measures: use one")
    if list_specs and (spec is not None or export is not None):
        raise click.UsageError("--list-specs cannot be combined with --spec or --export")
    from tuner.core.codec import to_dict

    if list_specs:
        from profiler.spec import shipped_specs

        names = shipped_specs()
        if json_:
            click.echo(json.dumps(names, indent=2))
        else:
            width = max((len(name) for name in names), default=0)
            for name, title in names.items():
                click.echo(f"{name:<{width}}  {title}")
        return
    if spec is not None:
        from profiler.spec import load_spec

        described = load_spec(spec)
        if json_:
            click.echo(json.dumps({"fingerprint": described.fingerprint, **to_dict(described)}, indent=2))
            return
        footer = f"hardware fingerprint {described.fingerprint} (spec {spec}; nothing measured)"
        _print_hardware(described, footer)
        return

    if export is not None and not export.resolve().parent.is_dir():
        # Checked before measuring: a typo should not cost the seconds a measurement takes.
        raise click.BadParameter(f"no folder {export.parent} to write into", param_hint="--export")
    from tuner.workflows import measure_this_machine

    store = _open_store(db_url)
    if json_:
        measured = measure_this_machine(store)
    else:
        with _stderr().status("measuring") as status:
            measured = measure_this_machine(store, on_step=lambda step: status.update(f"measuring {step}"))
    if export is not None:
        from profiler.spec import dump_spec

        dump_spec(measured, export)
    if json_:
        click.echo(json.dumps({"fingerprint": measured.fingerprint, **to_dict(measured)}, indent=2))
    else:
        _print_hardware(measured, f"hardware fingerprint {measured.fingerprint}")
    if export is not None:
        click.echo(f"spec written to {export} (read it anywhere: tuner hardware --spec {export})", err=True)


def _print_hardware(hardware: HardwareProfile, footer: str) -> None:
    from reports.terminal import hardware_tables

    console = _stdout()
    for table in hardware_tables(hardware):
        console.print(table)
    console.print(footer)


@cli.command()
@click.argument("model")
@click.option(
    "--hardware",
    "hardware_spec",
    metavar="SPEC",
    help="Plan for the machine a spec file describes (a path, or a shipped name: tuner hardware "
    "--list-specs). [default: this machine, measured]",
)
@click.option(
    "--max-memory",
    metavar="LIMITS",
    help='Memory each device may use, e.g. "0=20GiB,1=22GiB,cpu=64GiB" (GiB/MiB powers of two, '
    "GB/MB powers of ten). [default: what is free]",
)
@workload_options
@click.option("--trials", default=300, show_default=True, type=click.IntRange(min=0), help="Optuna trials.")
@click.option(
    "--timeout", type=click.FloatRange(min=0), metavar="SECONDS", help="Stop the search after this long."
)
@click.option(
    "--pin", "pins", multiple=True, metavar="UNIT=DEVICE", help="Keep a unit on a device; repeatable."
)
@click.option("--exclude", multiple=True, metavar="DEVICE", help="Never use this device; repeatable.")
@click.option(
    "--no-seed", is_flag=True, help="Do not start the search from accelerate's maps and the exact optimum."
)
@click.option("--seed", "random_seed", type=int, help="Random seed of the search, for repeatable runs.")
@click.option("--force", is_flag=True, help="Search again even if an identical run is stored.")
@click.option(
    "--resume",
    type=int,
    metavar="RUN",
    help="Continue an interrupted run, or join a run another process is searching on a shared database "
    "(PostgreSQL) as one more worker; same arguments. The workers share the --trials budget.",
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
@json_option
@db_option
def optimize(
    model: str,
    hardware_spec: str | None,
    max_memory: str | None,
    batch: int,
    seq: int,
    new_tokens: int | None,
    dtype: str,
    trust_remote_code: bool,
    trials: int,
    timeout: float | None,
    pins: Sequence[str],
    exclude: Sequence[str],
    no_seed: bool,
    random_seed: int | None,
    force: bool,
    resume: int | None,
    repeats: int,
    measure: int,
    measure_rounds: int,
    json_: bool,
    db_url: str | None,
) -> None:
    """Find the fastest device map of MODEL that fits, and store the run.

    Profiles the model (or reuses its stored profile), prices accelerate's own strategies and the
    exact optimum with the same cost model, then searches with Optuna. The winner is never
    worse than either. Ctrl-C keeps the trials so far; --resume RUN continues. With --measure K
    the best maps are then timed for real and the measured winner is stored (a stored run that
    was never measured is measured, not searched again).

    \b
    Examples:
      tuner optimize ./llama --seq 512 --new-tokens 128 --max-memory "cpu=8GiB"
      tuner optimize ./llama --max-memory "cpu=8GiB" --measure 3
      tuner optimize ./llama-70b-config --hardware 8xH100-80GB-nvlink --dtype bfloat16
      tuner optimize ./llama --pin lm_head=1 --exclude disk --json
    """
    from tuner.core.codec import to_dict
    from tuner.workflows import optimize as run_optimize

    store = _open_store(db_url)
    with _Progress(enabled=not json_, first="starting") as progress:
        try:
            outcome = run_optimize(
                model,
                store,
                hardware=hardware_spec,
                max_memory=max_memory,
                batch=batch,
                seq=seq,
                new_tokens=new_tokens,
                dtype=dtype,
                trials=trials,
                timeout=timeout,
                pins=pins,
                exclude=exclude,
                seed_search=not no_seed,
                force=force,
                resume=resume,
                trust_remote_code=trust_remote_code,
                repeats=repeats,
                random_seed=random_seed,
                measure=measure,
                measure_rounds=measure_rounds,
                listener=progress,
            )
        except KeyboardInterrupt:
            latest = store.latest_run()
            if latest is not None and progress.measuring_now:
                click.echo(
                    f"interrupted while measuring: run {latest.id} keeps its modelled winner and no "
                    "measurement; the same command measures it",
                    err=True,
                )
            elif latest is not None:
                click.echo(
                    f"interrupted: run {latest.id} keeps its {latest.trials} trials; continue it with "
                    f"--resume {latest.id}",
                    err=True,
                )
            raise
    measured = _measured(store, outcome.run)
    if json_:
        document = {"reused": outcome.reused, "searched": outcome.searched, **to_dict(outcome.run)}
        click.echo(json.dumps({**document, "measured": [to_dict(c) for c in measured]}, indent=2))
        return
    from reports.terminal import run_tables

    console = _stdout()
    for table in run_tables(outcome.run, measured=measured):
        console.print(table)
    if outcome.reused:
        console.print(f"run {outcome.run.id} from the database (--force searches again)")
    else:
        console.print(
            f"stored as run {outcome.run.id}; export it with: tuner export {outcome.run.id} -o map.json"
        )


@cli.command()
@click.argument("run", metavar="RUN|latest")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write to FILE, not stdout."
)
@click.option(
    "--with-max-memory",
    is_flag=True,
    help="Write {device_map, max_memory} (the run's limits) instead of the bare map.",
)
@db_option
def export(run: str, output: str | None, with_max_memory: bool, db_url: str | None) -> None:
    """Write a run's winning map as JSON that from_pretrained takes as it is.

    \b
      tuner export latest -o map.json
      model = AutoModelForCausalLM.from_pretrained(path, device_map=json.load(open("map.json")))
    """
    found = _find_run(_open_store(db_url), run)
    if found.winner is None:
        raise click.ClickException(f"run {found.id} has no map that fits ({found.status.value})")
    document: dict[str, Any] = found.winner.device_map.to_hf()
    if with_max_memory:
        document = {
            "device_map": document,
            "max_memory": {to_hf(k): v for k, v in found.max_memory.items()},
        }
    text = json.dumps(document, indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from exc
    units = len(document["device_map"] if with_max_memory else document)
    click.echo(f"run {found.id}: map of {units} units written to {output}", err=True)


def _measured(store: Store, run: Run) -> list[Candidate]:
    """The run's candidates that were loaded and run for real, whether they ran or failed."""
    return [c for c in store.list_candidates(run.id) if c.measured_s is not None or c.measure_error]


@cli.command()
@click.option("--model", metavar="TEXT", help="Only runs whose model name contains TEXT.")
@click.option(
    "--hardware", "hardware_name", metavar="TEXT", help="Only runs whose hardware name contains TEXT."
)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@json_option
@db_option
def history(
    model: str | None, hardware_name: str | None, limit: int, json_: bool, db_url: str | None
) -> None:
    """Past tuning runs, newest first."""
    runs = _open_store(db_url).list_runs(model=model, hardware=hardware_name, limit=limit)
    if json_:
        from tuner.core.codec import to_dict

        click.echo(json.dumps([to_dict(run) for run in runs], indent=2))
        return
    from reports.terminal import history_table

    if not runs:
        click.echo("no runs yet: tuner optimize MODEL stores one", err=True)
        return
    _stdout().print(history_table(runs))


@cli.command()
@click.argument("run", metavar="RUN|latest")
@json_option
@db_option
def show(run: str, json_: bool, db_url: str | None) -> None:
    """One run in full: settings, winner, accelerate's strategies, the exact optimum, and the maps
    measured for real (`optimize --measure`) with their latency or why they failed."""
    store = _open_store(db_url)
    found = _find_run(store, run)
    measured = _measured(store, found)
    if json_:
        from tuner.core.codec import to_dict

        click.echo(json.dumps({**to_dict(found), "measured": [to_dict(c) for c in measured]}, indent=2))
        return
    from reports.terminal import run_tables

    console = _stdout()
    for table in run_tables(found, placements=True, measured=measured):
        console.print(table)


@cli.command()
@click.argument("run", metavar="RUN|latest")
@click.option(
    "-o",
    "--output",
    default="report.html",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="HTML file.",
)
@db_option
def report(run: str, output: str, db_url: str | None) -> None:
    """Write one self-contained HTML report of a run: placement, memory against limits, per-unit
    costs, the comparison with accelerate and the exact optimum, and the search history.

    It needs no network to view.
    """
    from reports.html import render

    store = _open_store(db_url)
    found = _find_run(store, run)
    profile = store.find_profile(found.model_fingerprint, found.hardware_fingerprint, found.workload)
    page = render(
        found,
        store.list_candidates(found.id),
        graph=profile.graph if profile else None,
        profiles=profile.units if profile else (),
    )
    try:
        Path(output).write_text(page, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from exc
    click.echo(f"run {found.id}: report written to {output}", err=True)


@cli.command()
@click.argument("source", metavar="RUN|MAP.json")
@click.argument("model")
@click.option("--batch", type=click.IntRange(min=1), help="Prompts per call. [default: the run's]")
@click.option("--seq", type=click.IntRange(min=1), help="Prompt length. [default: the run's]")
@click.option("--new-tokens", type=click.IntRange(min=0), help="Tokens to generate. [default: the run's]")
@click.option("--dtype", type=click.Choice(list(DTYPE_BYTES)), help="[default: the run's, else float32]")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1), help="Timed calls.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code from its folder.")
@json_option
@db_option
def validate(
    source: str,
    model: str,
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

    SOURCE is a stored run (its winner and workload; the measurement is stored on the run) or a
    JSON map as `tuner export` writes it. MODEL is the folder with the weights.

    \b
      tuner validate latest ./my-llama
      tuner validate map.json ./my-llama --seq 128 --new-tokens 32
    """
    from dataclasses import asdict
    from dataclasses import replace

    from profiler.validate import validate as run_validation
    from tuner.core.domain import DeviceMap
    from tuner.core.domain import Workload

    store = _open_store(db_url)
    found = None
    if source.endswith(".json"):
        try:
            mapping = json.loads(Path(source).read_text())
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"cannot read the map {source}: {exc}") from exc
        if not isinstance(mapping, dict):
            raise click.ClickException(f"{source} is not a device map (a JSON object of unit -> device)")
        device_map = DeviceMap(tuple((str(unit), str(place)) for unit, place in mapping.items()))
        base = Workload(dtype=dtype or "float32")
    else:
        found = _find_run(store, source)
        if found.winner is None:
            raise click.ClickException(f"run {found.id} has no map that fits ({found.status.value})")
        device_map = found.winner.device_map
        base = found.workload
    workload = Workload(
        batch=batch or base.batch,
        seq=seq or base.seq,
        new_tokens=base.new_tokens if new_tokens is None else new_tokens,
        dtype=dtype or base.dtype,
    )
    result = run_validation(model, device_map, workload, repeats=repeats, trust_remote_code=trust_remote_code)
    predicted = None
    if found is not None and found.winner is not None and found.winner.prediction is not None:
        if workload == found.workload:
            predicted = found.winner.prediction.latency_s
        if result.ok and result.latency_s is not None and workload == found.workload:
            store.finish_run(
                found.id,
                status=found.status,
                winner=replace(found.winner, measured_s=result.latency_s),
                trials=found.trials,
                phase_seconds=found.phase_seconds,
            )
    if json_:
        click.echo(json.dumps({**asdict(result), "predicted_s": predicted}, indent=2))
    else:
        _print_validation(result, predicted)
    if not result.ok:
        raise click.ClickException(f"the map failed validation: {result.reason}")


def _print_validation(result: Any, predicted: float | None) -> None:
    from reports.terminal import format_seconds
    from tuner.core.sizes import format_bytes

    console = _stdout()
    verdict = "[green]ok[/green]" if result.ok else f"[red]failed[/red]: {result.reason}"
    console.print(f"validation: {verdict}")
    if result.max_abs_diff is not None:
        console.print(f"  logits max |diff| from one device: {result.max_abs_diff:.2e}")
    elif result.ok:
        console.print("  outputs not compared: the whole model does not fit one device's free memory")
    if result.tokens_equal is not None:
        console.print(f"  greedy tokens equal: {'yes' if result.tokens_equal else 'no'}")
    if result.latency_s is not None:
        line = f"  measured latency: {format_seconds(result.latency_s)}"
        if predicted:
            error = abs(predicted - result.latency_s) / result.latency_s
            line += f" (predicted {format_seconds(predicted)}, error {error:.0%})"
        console.print(line)
    for device, nbytes in result.peak_memory.items():
        console.print(f"  peak memory {device}: {format_bytes(nbytes)}")


def _find_run(store: Store, run: str) -> Run:
    if run == "latest":
        latest = store.latest_run()
        if latest is None:
            raise click.ClickException("no runs yet: tuner optimize MODEL stores one")
        return latest
    if not run.isdigit():
        raise click.BadParameter(f"{run!r} is not a run id; give a number or 'latest'", param_hint="RUN")
    return store.get_run(int(run))


@cli.group()
def db() -> None:
    """The database: where it is and its schema."""


@db.command()
@db_option
def upgrade(db_url: str | None) -> None:
    """Bring the database schema up to this version of the tuner."""
    from storage import Store
    from storage import default_url

    url = db_url or default_url()
    with Store(url, check_schema=False) as store:
        store.upgrade()
    click.echo(f"{url}: schema is current")


@db.command(name="path")
@db_option
def db_path(db_url: str | None) -> None:
    """Print the URL of the database in use."""
    from storage import default_url

    click.echo(db_url or default_url())


def _stdout() -> Console:
    from rich.console import Console

    console = Console()
    # Piped into a file or another program, a table must not be cut to an assumed 80 columns.
    return console if console.is_terminal else Console(width=240)


class _Progress(OptimizeListener):
    """A progress bar on stderr for profiling and searching; silent for `--json` or off a terminal."""

    def __init__(self, enabled: bool, first: str) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._first = first
        self._progress: Any = None
        self._task: Any = None
        self._best = math.inf
        #: Whether the run's maps are being measured: an interrupt then leaves a complete run.
        self.measuring_now = False

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn
            from rich.progress import MofNCompleteColumn
            from rich.progress import Progress
            from rich.progress import TextColumn
            from rich.progress import TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=_stderr(),
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self._first, total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def phase(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=description, total=None, completed=0)

    def traced(self, graph: Any, devices: Sequence[str], calls: int) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task,
                description=f"profiling {len(graph.units)} units on {', '.join(devices)}",
                total=calls,
            )

    def unit_done(self, event: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1)

    def searching(self, trials: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description="searching", total=trials, completed=0)

    def measuring(self, maps: int, rounds: int) -> None:
        self.measuring_now = True
        if self._progress is not None:
            self._progress.update(
                self._task, description=f"measuring {maps} maps for real ({rounds} interleaved rounds)"
            )

    def trial_done(self, candidate: Any) -> None:
        if self._progress is None:
            return
        prediction = candidate.prediction
        if prediction is not None and prediction.feasible:
            self._best = min(self._best, prediction.latency_s)
        best = f"best {self._best:.4g} s" if self._best < math.inf else "no map fits yet"
        self._progress.update(self._task, advance=1, description=f"searching ({best})")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI and turn every error into one line on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="tuner", standalone_mode=False)
        sys.exit(0)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.Abort:
        click.echo("interrupted", err=True)
        sys.exit(_EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(_EXIT_INTERRUPTED)
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (TunerError, ValueError) as exc:
        if debug:
            raise
        click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(_EXIT_ERROR)
    except Exception as exc:  # the last line of defence: a user never sees a traceback by default
        if debug:
            raise
        click.echo(
            f"error: unexpected {type(exc).__name__}: {_one_line(exc)} (--debug shows where)", err=True
        )
        sys.exit(_EXIT_ERROR)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
