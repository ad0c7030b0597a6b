"""Byte counts as people write them: ``20GiB``, ``1.5 GB``, ``512MiB``, ``0=20GiB,cpu=64GiB``.

Pure functions, no torch. Binary units (``KiB``, ``MiB``, ``GiB``, ``TiB``) are powers of two and
decimal units (``KB``, ``MB``, ``GB``, ``TB``) powers of ten, as IEC 80000-13 defines them; a bare
integer is bytes. Letters are read case-insensitively except for one: a lowercase trailing ``b``
(``20gb``, ``20Gb``, ``500mb``) conventionally means *bits*, so it is refused rather than guessed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from fractions import Fraction

from tuner.core.devices import to_key

__all__ = ["format_bytes", "parse_bytes", "parse_max_memory", "read_limits", "round_bytes"]

#: Bytes per unit, keyed by the unit's upper-cased spelling.
_UNITS: dict[str, int] = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}

_ACCEPTED = "B, KB, MB, GB, TB (powers of 10) or KiB, MiB, GiB, TiB (powers of 2)"

_SIZE = re.compile(r"(?P<sign>[+-]?)(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[A-Za-z]*)")


def parse_bytes(text: str | int) -> int:
    """A byte count from an integer or a size such as ``"20GiB"``, ``"1.5 GB"`` or ``"4096"``.

    Fractions of a byte are rounded down (``"0.1KiB"`` is 102 bytes).

    Args:
        text: a non-negative integer, or a number followed by an optional unit, with optional
            whitespace between them.

    Returns:
        The number of bytes.

    Raises:
        ValueError: the text is empty, negative, malformed, names an unknown unit, or ends in a
            lowercase ``b`` that could mean bits.

    Example:
        >>> parse_bytes("1.5GiB"), parse_bytes("20 GB"), parse_bytes(512)
        (1610612736, 20000000000, 512)
    """
    if isinstance(text, bool):  # bool is an int subclass; True bytes is a mistake, not 1
        raise ValueError(f"a size must be a number of bytes or a string like '20GiB', not {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size must not be negative (got {text})")
        return text
    if not isinstance(text, str):
        raise ValueError(f"a size must be a number of bytes or a string like '20GiB', not {text!r}")
    stripped = text.strip()
    if not stripped:
        raise ValueError("a size must not be empty (write e.g. 20GiB or 20GB)")
    match = _SIZE.fullmatch(stripped)
    if match is None:
        raise ValueError(f"{text!r} is not a size: write a number and a unit, e.g. 20GiB ({_ACCEPTED})")
    number, unit = match["number"], match["unit"]
    if match["sign"] == "-":
        raise ValueError(f"a size must not be negative (got {text!r})")
    if unit.endswith("b"):
        raise ValueError(_ambiguous(text, number, unit))
    factor = _UNITS.get(unit.upper())
    if factor is None:
        raise ValueError(f"{text!r} has an unknown unit {unit!r}: use {_ACCEPTED}")
    return int(Fraction(number) * factor)


def _ambiguous(text: str, number: str, unit: str) -> str:
    """The message for a lowercase trailing ``b``: the byte spellings it might have meant."""
    stem = unit[:-1].upper()
    if stem.endswith("I"):  # "Gib": the binary unit, written with a bit's b
        prefix = stem[:-1]
        binary = _power(prefix, binary=True)
        return f"{text!r} is ambiguous (b is bits): write {number}{prefix}iB ({binary} bytes)"
    if not stem:
        return f"{text!r} is ambiguous (b is bits): write {number}B (bytes)"
    if stem not in {"K", "M", "G", "T"}:
        return f"{text!r} has an unknown unit {unit!r}: use {_ACCEPTED}"
    return (
        f"{text!r} is ambiguous (b is bits): write {number}{stem}B ({_power(stem, binary=False)} bytes) "
        f"or {number}{stem}iB ({_power(stem, binary=True)} bytes)"
    )


def _power(prefix: str, *, binary: bool) -> str:
    exponent = "KMGT".index(prefix) + 1
    return f"2^{10 * exponent}" if binary else f"10^{3 * exponent}"


def parse_max_memory(text: str) -> dict[str, int]:
    """Per-device memory limits from ``"0=20GiB,1=22GiB,cpu=64GiB,disk=1TB"``.

    Keys are GPU indices (``0``, ``1``...; ``cuda:0`` is read as ``0``), ``mps``, ``cpu`` and
    ``disk``; values are sizes as `parse_bytes` reads them. Whitespace around entries is ignored.

    Args:
        text: comma-separated ``KEY=SIZE`` entries.

    Returns:
        Bytes per device key, in the order given.

    Raises:
        ValueError: the text is empty, an entry is malformed, names an unknown device, repeats
            a device, or has an unreadable size; the message names the entry.

    Example:
        >>> parse_max_memory("0=20GiB, cpu=64GiB")
        {'0': 21474836480, 'cpu': 68719476736}
    """
    if not text.strip():
        raise ValueError("max memory must not be empty (write e.g. 0=20GiB,cpu=64GiB)")
    entries = []
    for raw in text.split(","):
        entry = raw.strip()
        key, sep, value = entry.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"max memory entry {entry!r} is not KEY=SIZE (e.g. 0=20GiB, cpu=64GiB)")
        entries.append((f"max memory entry {entry!r}", key, value.strip()))
    return read_limits(entries)


def read_limits(entries: Iterable[tuple[str, int | str, int | str]]) -> dict[str, int]:
    """Bytes per device key from ``(where, device, size)`` entries, as users write both.

    Args:
        entries: `where` names the entry in messages; `device` is read by
            `tuner.core.devices.to_key` (``0``, ``"cuda:0"``, ``"CPU"``), `size` by `parse_bytes`.

    Raises:
        ValueError: a device named twice or unknown, or an unreadable size; the message starts
            with the entry's `where`.
    """
    limits: dict[str, int] = {}
    for where, device, size in entries:
        try:
            key = to_key(device)
            if key in limits:
                raise ValueError(f"device {key!r} is given twice")
            limits[key] = parse_bytes(size)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    return limits


def format_bytes(count: float) -> str:
    """Binary units, as memory is sold and as ``--max-memory`` reads them: 1.5 GiB, 12 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def round_bytes(count: int, *, up: bool = False) -> int:
    """`count` rounded down (or `up`) to a tenth of its binary unit, which `format_bytes` writes
    whole, so that the figure shown is the figure meant: 13 003 000 bytes -> 12.4 MiB down,
    12.5 MiB up.

    Example:
        >>> format_bytes(round_bytes(13_003_000)), format_bytes(round_bytes(13_003_000, up=True))
        ('12.4 MiB', '12.5 MiB')
    """
    unit = 1
    while count >= unit * 1024 and unit < 1 << 40:
        unit *= 1024
    step = unit / 10 if unit > 1 else 1
    steps = count / step
    return int((math.ceil(steps) if up else math.floor(steps)) * step)
