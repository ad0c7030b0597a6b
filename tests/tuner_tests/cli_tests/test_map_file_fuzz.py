"""Map files as anyone may write them: any JSON (or any bytes) in a MAP.json is a device map or
one line saying why not, and a map that reads is then placed on the model or refused in one line.

`DEVICE_MAP_FILE` (``--candidate``, ``tuner price``, ``tuner validate``), then the checks
`tuner.price` makes of a map against the tiny Llama's units (`read_placements`,
`check_device_map`), fuzzed with hypothesis.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from profiler.hardware import describe_hardware
from profiler.model import MetaModel
from profiler.model import build_meta_model
from profiler.source import resolve_source
from tuner.cli.options import DEVICE_MAP_FILE
from tuner.core.domain import DeviceMap
from tuner.core.exceptions import ConstraintError
from tuner.workflows import read_placements
from tuner.workflows.request import check_device_map

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


@pytest.fixture(scope="module")
def llama(config_folder: object) -> MetaModel:
    return build_meta_model(resolve_source(str(config_folder("llama"))), "auto")  # type: ignore[operator]


def read_map_file(path: Path) -> dict[str, int | str] | str:
    """The map the option reads, or its one-line complaint."""
    try:
        return DEVICE_MAP_FILE.convert(str(path), None, None)
    except click.BadParameter as exc:
        message = exc.format_message()
        assert message and "\n" not in message
        return message


@FAST
@given(st.binary(max_size=64))
def test_any_bytes_are_a_map_or_one_line(folder: Path, content: bytes) -> None:
    path = folder / "map.json"
    path.write_bytes(content)
    read_map_file(path)


@FAST
@given(JSON | st.fixed_dictionaries({"device_map": JSON, "max_memory": JSON}))
def test_any_json_is_a_map_or_one_line(folder: Path, document: object) -> None:
    path = folder / "map.json"
    path.write_text(json.dumps(document))
    found = read_map_file(path)
    if isinstance(found, dict):
        assert all(isinstance(place, (int, str)) and not isinstance(place, bool) for place in found.values())


NAMES = st.sampled_from(
    ["", "model", "model.layers", "model.layers.0", "model.layers.0.mlp", "lm_head", "nope"]
)
PLACES = st.one_of(
    st.integers(-1, 3), st.sampled_from(["cpu", "disk", "mps", "cuda:0", "gpu", ""]), st.booleans()
)


@FAST
@given(st.dictionaries(NAMES | st.text(max_size=6), PLACES, max_size=6))
def test_a_map_that_reads_is_placed_or_refused_in_one_line(
    llama: MetaModel, mapping: dict[str, object]
) -> None:
    hardware = describe_hardware()
    try:
        placements = read_placements("device_map", mapping)  # type: ignore[arg-type]
        dmap = check_device_map("device_map", placements, llama, hardware)
    except ConstraintError as exc:
        assert str(exc).startswith("device_map") and "\n" not in str(exc)
    else:
        assert isinstance(dmap, DeviceMap)
        assert [unit for unit, _ in dmap.placements] == list(llama.unit_names)
        assert {place for _, place in dmap.placements} <= {d.key for d in hardware.devices}
