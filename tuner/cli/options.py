"""click parameter types and the options several commands share.

Each type turns one flag's text into what the Python API takes (``--max-memory "0=20GiB,cpu=8GiB"``
becomes ``{"0": 21474836480, "cpu": 8589934592}``) or fails with click's one-line message that
names the flag.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
from typing import NoReturn

import click

from tuner.core.domain import AUTO_DTYPE
from tuner.core.domain import DTYPE_CHOICES
from tuner.core.sizes import parse_max_memory

if TYPE_CHECKING:
    from tuner.workflows import MapArguments

__all__ = [
    "DEVICE_MAP_FILE",
    "MAP_FILE_WITH_LIMITS",
    "MAX_MEMORY",
    "PIN",
    "RUN",
    "db_option",
    "json_option",
    "planning_options",
    "workload_options",
]


class _MaxMemory(click.ParamType):
    name = "LIMITS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dict[str, int]:
        if isinstance(value, dict):
            return value
        try:
            return parse_max_memory(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Pin(click.ParamType):
    name = "UNIT=DEVICE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        unit, sep, device = str(value).partition("=")
        if not sep or not unit.strip() or not device.strip():
            self.fail(f"{value!r}: write UNIT=DEVICE, e.g. lm_head=1", param, ctx)
        return unit.strip(), device.strip()


class _DeviceMapFile(click.ParamType):
    """A JSON file holding a device map as `tuner export` writes it: ``{unit: device}``, or
    ``{"device_map": {...}, "max_memory": {...}, "dtype": ...}`` (``export --with-max-memory``); the
    map alone."""

    name = "MAP.json"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dict[str, int | str]:
        if isinstance(value, dict):
            return value
        return read_map_file(value, lambda message: self.fail(message, param, ctx))["device_map"]


class _MapFileWithLimits(click.ParamType):
    """As `DEVICE_MAP_FILE`, with the limits and dtype of an ``export --with-max-memory`` file
    (`tuner.workflows.MapArguments`)."""

    name = "MAP.json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> MapArguments:
        if isinstance(value, dict):
            return value  # type: ignore[return-value]  # converted already
        return read_map_file(value, lambda message: self.fail(message, param, ctx))


def read_map_file(value: Any, fail: Callable[[str], NoReturn]) -> MapArguments:
    """The map file at path `value`; `fail` is called with a one-line reason when it is none."""
    from tuner.api import read_map
    from tuner.core.exceptions import ConstraintError

    try:
        arguments = read_map(value)
    except ConstraintError as exc:
        fail(str(exc))
    return arguments


class _RunReference(click.ParamType):
    name = "RUN|latest"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int) or value == "latest":
            return value
        if not str(value).isdigit():
            self.fail(f"{value!r} is not a run id; give a number or 'latest'", param, ctx)
        return int(value)


MAX_MEMORY = _MaxMemory()
PIN = _Pin()
DEVICE_MAP_FILE = _DeviceMapFile()
MAP_FILE_WITH_LIMITS = _MapFileWithLimits()
RUN = _RunReference()


def db_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--db URL`` with the ``TUNER_DB`` fallback, shared by every command that stores."""
    return click.option(
        "--db",
        "db_url",
        envvar="TUNER_DB",
        metavar="URL|PATH",
        help="The database: a SQLAlchemy URL, or a SQLite file's path [env TUNER_DB; default: a SQLite file "
        "in your data folder].",
    )(command)


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "json_",
        "--json",
        is_flag=True,
        help='Print one JSON document instead of tables; on an error, {"error": ...}.',
    )(command)


def workload_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--batch, --seq, --new-tokens, --dtype and --trust-remote-code, shared by the commands that
    profile, tune or price."""
    options = [
        click.option(
            "--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Prompts per call."
        ),
        click.option(
            "--seq",
            default=128,
            show_default=True,
            type=click.IntRange(min=1),
            help="Prompt length in tokens (text models; an image or speech model keeps the default).",
        ),
        click.option(
            "--new-tokens",
            default=None,
            type=click.IntRange(min=0),
            help="Tokens to generate (one prefill, then one decode step per further token). "
            "[default: 32 for models that generate, else 0]",
        ),
        click.option(
            "--dtype",
            default=AUTO_DTYPE,
            show_default=True,
            type=click.Choice(list(DTYPE_CHOICES)),
            help="The dtype the model loads in; auto is what from_pretrained loads without one: the "
            "checkpoint's own (its config's dtype, else its weights').",
        ),
        click.option(
            "--trust-remote-code", is_flag=True, help="Allow the model's own Python code from its folder."
        ),
    ]
    return _stacked(command, options)


def planning_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--hardware and --max-memory: what machine, and how much of it a map may use."""
    options = [
        click.option(
            "--hardware",
            "hardware_spec",
            metavar="SPEC",
            help="Plan for the machine a spec file describes (a path, or a shipped name: tuner hardware "
            "--list-specs). [default: this machine, measured]",
        ),
        click.option(
            "--max-memory",
            type=MAX_MEMORY,
            help='Memory each device may use, e.g. "0=20GiB,1=22GiB,cpu=64GiB" (GiB/MiB powers of two, '
            "GB/MB powers of ten). [default: what is free]",
        ),
    ]
    return _stacked(command, options)


def _stacked(command: Callable[..., Any], options: Sequence[Callable[[Any], Any]]) -> Callable[..., Any]:
    """`command` with `options` applied, listed in --help in the order given."""
    for option in reversed(options):
        command = option(command)
    return command
