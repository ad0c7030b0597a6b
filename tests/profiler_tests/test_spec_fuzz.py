"""Spec files as anyone may edit them: any JSON, and any shipped spec with one field removed or
replaced by any JSON value, is read into a `HardwareProfile` or refused in one line naming the
spec (`load_spec`), fuzzed with hypothesis.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from profiler.spec import SPECS_DIR
from profiler.spec import load_spec
from tuner.core.domain import HardwareProfile
from tuner.core.exceptions import SpecError

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**64) | st.floats() | st.text(max_size=10)
SCALARS |= st.sampled_from(["0", "cpu", "disk", "cuda", "1GiB", "-1GiB", "20gb", "", "nvlink"])
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)

SHIPPED = {
    path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(SPECS_DIR.glob("*.json"))
}


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def read(folder: Path, text: str) -> HardwareProfile | None:
    """The spec in a file of `text`, or None after checking its one-line refusal."""
    path = folder / "spec.json"
    path.write_text(text, encoding="utf-8")
    try:
        return load_spec(path)
    except SpecError as exc:
        message = str(exc)
        assert message.startswith(f"spec {path}") and "\n" not in message, message
        return None


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document: object keys and list positions, nested."""
    found = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += paths(value, (*prefix, index))
    return found


@st.composite
def mutated_specs(draw: st.DrawFn) -> Any:
    """A shipped spec with one to three places removed or given another JSON value."""
    document = copy.deepcopy(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(document)))
        parent = document
        for step in where[:-1]:
            parent = parent[step]
        if draw(st.booleans()):
            del parent[where[-1]]
        else:
            parent[where[-1]] = draw(JSON)
        if not paths(document):
            break
    return document


@FAST
@given(JSON)
def test_any_json_is_a_spec_or_one_line(folder: Path, document: Any) -> None:
    read(folder, json.dumps(document))


@FAST
@given(st.text(max_size=40))
def test_any_text_is_a_spec_or_one_line(folder: Path, text: str) -> None:
    read(folder, text)


@FAST
@given(mutated_specs())
def test_an_edited_shipped_spec_is_a_spec_or_one_line(folder: Path, document: Any) -> None:
    hardware = read(folder, json.dumps(document))
    if hardware is not None:
        assert hardware.source == "spec" and hardware.devices


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_spec_reads(folder: Path, name: str) -> None:
    assert read(folder, json.dumps(SHIPPED[name])) is not None
