"""Memory sizes as anyone may type them: any text is a size or one line saying why not.

`parse_bytes`, `parse_max_memory`, the ``--max-memory`` option and the API's ``max_memory``
argument, fuzzed with hypothesis; sizes written by `format_bytes` read back within its rounding.
"""

from __future__ import annotations

import click
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tuner.cli.options import MAX_MEMORY
from tuner.core.exceptions import TunerError
from tuner.core.sizes import format_bytes
from tuner.core.sizes import parse_bytes
from tuner.core.sizes import parse_max_memory
from tuner.workflows import TuningRequest

FAST = settings(max_examples=200, deadline=None)

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
UNITS |= {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}

#: Text near the grammar: digits, units, separators, signs, and odd characters.
NEARLY_SIZES = st.lists(
    st.sampled_from([*"0123456789.,=+-_ eE\t\n", "KiB", "GB", "b", "B", "cpu", "cuda:", "²", "٣", "∞"]),
    max_size=12,
).map("".join)
ANY_TEXT = st.one_of(st.text(max_size=24), NEARLY_SIZES)


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message


@FAST
@given(ANY_TEXT)
def test_any_text_is_a_size_or_one_line_why_not(text: str) -> None:
    try:
        size = parse_bytes(text)
    except ValueError as exc:
        assert one_line(str(exc))
    else:
        assert isinstance(size, int) and size >= 0


@FAST
@given(ANY_TEXT)
def test_any_text_is_limits_or_one_line_why_not(text: str) -> None:
    try:
        limits = parse_max_memory(text)
    except ValueError as exc:
        assert one_line(str(exc))
    else:
        assert limits and all(isinstance(size, int) and size >= 0 for size in limits.values())


@FAST
@given(ANY_TEXT)
def test_the_max_memory_option_fails_as_click_does(text: str) -> None:
    try:
        limits = MAX_MEMORY.convert(text, None, None)
    except click.BadParameter as exc:
        assert one_line(exc.format_message())
    else:
        assert limits == parse_max_memory(text)


KEYS = st.one_of(
    st.integers(-3, 9), st.sampled_from(["cpu", "disk", "mps", "cuda:1", "CPU", " 0 "]), st.text(max_size=6)
)
SIZES = st.one_of(st.integers(-5, 2**50), st.floats(allow_nan=True), st.none(), st.booleans(), ANY_TEXT)


@FAST
@given(st.dictionaries(KEYS, SIZES, max_size=4))
def test_max_memory_from_python_is_limits_or_one_tuner_error(max_memory: dict[object, object]) -> None:
    try:
        request = TuningRequest.from_arguments("model", max_memory=max_memory)  # type: ignore[arg-type]
    except TunerError as exc:
        assert one_line(str(exc))
    else:
        assert all(size >= 0 for size in request.max_memory.values())


@FAST
@given(st.integers(0, 2**50), st.sampled_from(sorted(UNITS)))
def test_a_whole_number_of_any_unit_reads_exactly(count: int, unit: str) -> None:
    assert parse_bytes(f"{count}{unit}") == count * UNITS[unit]
    assert parse_bytes(f" {count} {unit} ") == count * UNITS[unit]


@FAST
@given(st.integers(0, 2**50))
def test_formatted_sizes_read_back_within_their_rounding(count: int) -> None:
    text = format_bytes(count)
    unit = text.split()[-1]
    # one decimal of the unit shown: at most half a tenth of it off
    assert abs(parse_bytes(text.replace(" ", "")) - count) <= 0.05 * UNITS[unit] + 1


@pytest.mark.parametrize("text", ["20gb", "1.5 Gib", "5b"])
def test_a_lowercase_b_is_refused_as_bits(text: str) -> None:
    with pytest.raises(ValueError, match="ambiguous"):
        parse_bytes(text)
