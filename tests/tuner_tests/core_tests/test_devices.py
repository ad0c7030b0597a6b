from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tuner.core.devices import device_label
from tuner.core.devices import device_order
from tuner.core.devices import is_gpu
from tuner.core.devices import is_offload
from tuner.core.devices import is_placement
from tuner.core.devices import main_device
from tuner.core.devices import to_hf
from tuner.core.devices import to_key

keys = st.one_of(st.integers(0, 64).map(str), st.sampled_from(["mps", "cpu", "disk"]))


@pytest.mark.parametrize(
    ("given_value", "key"),
    [
        (0, "0"),
        (3, "3"),
        ("0", "0"),
        ("007", "7"),
        ("cuda:1", "1"),
        (" CPU ", "cpu"),
        ("disk", "disk"),
        (torch.device("cuda:2"), "2"),  # as transformers takes them in a device_map
        (torch.device("cpu"), "cpu"),
    ],
)
def test_to_key_reads_every_spelling_transformers_and_users_write(given_value: int | str, key: str) -> None:
    assert to_key(given_value) == key


@pytest.mark.parametrize(
    "bad", [-1, True, "gpu", "cuda", "cuda:x", "", "meta", 1.0, torch.device("cuda"), torch.device("meta")]
)
def test_to_key_refuses_what_names_no_device(bad: object) -> None:
    with pytest.raises(ValueError, match="is not a device"):
        to_key(bad)  # type: ignore[arg-type]


@given(keys)
def test_keys_survive_the_round_trip_through_from_pretrained_spelling(key: str) -> None:
    assert is_placement(key)
    assert to_key(to_hf(key)) == key
    assert isinstance(to_hf(key), int) == is_gpu(key)


@given(st.lists(keys, min_size=1))
def test_main_device_is_the_lowest_gpu_else_mps_else_cpu(placed: list[str]) -> None:
    gpus = sorted(int(k) for k in placed if is_gpu(k))
    want = str(gpus[0]) if gpus else ("mps" if "mps" in placed else "cpu")
    assert main_device(placed) == want
    accelerators = [k for k in placed if k not in {"cpu", "disk"}]
    if accelerators:
        assert main_device(placed) == min(accelerators, key=device_order)


def test_order_lists_gpus_numerically_then_mps_cpu_disk() -> None:
    assert sorted(["disk", "10", "cpu", "2", "mps"], key=device_order) == ["2", "10", "mps", "cpu", "disk"]


def test_offload_and_labels() -> None:
    assert [is_offload(k) for k in ("0", "mps", "cpu", "disk")] == [False, False, True, True]
    assert device_label("1") == "GPU 1" and device_label("disk") == "disk"
