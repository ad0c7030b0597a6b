"""Byte counts as people write them: exact answers, and clear refusals of what is ambiguous."""

from __future__ import annotations

import pytest

from tuner.core.sizes import parse_bytes
from tuner.core.sizes import parse_max_memory

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("0", 0),
        ("512B", 512),
        ("1KiB", KiB),
        ("20GiB", 20 * GiB),
        ("20 GiB", 20 * GiB),
        ("  20GiB  ", 20 * GiB),
        ("1.5GiB", 3 * GiB // 2),
        ("1TiB", TiB),
        ("20GB", 20 * 10**9),
        ("1TB", 10**12),
        ("500MB", 500 * 10**6),
        ("3.84TB", 384 * 10**10),
        ("1kB", 1000),  # SI spells kilo with a lowercase k; the B is still bytes
        ("20gB", 20 * 10**9),
        ("20GIB", 20 * GiB),
        ("20giB", 20 * GiB),
        ("81559MiB", 81559 * MiB),
        (".5KiB", 512),
        ("0.1KiB", 102),  # 102.4 bytes: fractions of a byte round down
        ("+2MiB", 2 * MiB),
    ],
)
def test_parse_bytes_good(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("20gb", "'20gb' is ambiguous (b is bits): write 20GB (10^9 bytes) or 20GiB (2^30 bytes)"),
        ("20Gb", "'20Gb' is ambiguous (b is bits): write 20GB (10^9 bytes) or 20GiB (2^30 bytes)"),
        ("500mb", "'500mb' is ambiguous (b is bits): write 500MB (10^6 bytes) or 500MiB (2^20 bytes)"),
        ("1tb", "'1tb' is ambiguous (b is bits): write 1TB (10^12 bytes) or 1TiB (2^40 bytes)"),
        ("20Gib", "'20Gib' is ambiguous (b is bits): write 20GiB (2^30 bytes)"),
        ("100b", "'100b' is ambiguous (b is bits): write 100B (bytes)"),
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("-5GiB", "must not be negative"),
        (-1, "must not be negative (got -1)"),
        ("20G", "unknown unit 'G'"),
        ("20 parsecs", "unknown unit 'parsecs'"),
        ("GiB", "is not a size"),
        ("1e9", "is not a size"),
        ("1,5GiB", "is not a size"),
        ("20 GiB GiB", "is not a size"),
        (True, "not True"),
        (1.5, "not 1.5"),
    ],
)
def test_parse_bytes_bad(text: object, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_bytes(text)  # type: ignore[arg-type]
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_ambiguous_message_shows_both_byte_spellings() -> None:
    with pytest.raises(ValueError) as error:
        parse_bytes("20gb")
    assert "20GB" in str(error.value) and "20GiB" in str(error.value)


def test_parse_max_memory() -> None:
    assert parse_max_memory("0=20GiB,1=22GiB,cpu=64GiB,disk=1TB") == {
        "0": 20 * GiB,
        "1": 22 * GiB,
        "cpu": 64 * GiB,
        "disk": 10**12,
    }
    assert parse_max_memory(" 0 = 20GiB , mps=8GiB ") == {"0": 20 * GiB, "mps": 8 * GiB}
    assert parse_max_memory("cuda:1=2GB,CPU=4096") == {"1": 2 * 10**9, "cpu": 4096}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0=20GiB,0=22GiB", "max memory entry '0=22GiB': device '0' is given twice"),
        ("0=20GiB,cuda:0=1GiB", "max memory entry 'cuda:0=1GiB': device '0' is given twice"),
        ("gpu=20GiB", "max memory entry 'gpu=20GiB': 'gpu' is not a device (use 0, 1, ..., mps, cpu, disk)"),
        ("0:20GiB", "max memory entry '0:20GiB' is not KEY=SIZE"),
        ("0=", "max memory entry '0=' is not KEY=SIZE"),
        ("=20GiB", "max memory entry '=20GiB' is not KEY=SIZE"),
        ("0=20GiB,", "max memory entry '' is not KEY=SIZE"),
        ("0=20gb", "max memory entry '0=20gb': '20gb' is ambiguous"),
        ("cpu=-1GiB", "max memory entry 'cpu=-1GiB': a size must not be negative"),
        ("", "max memory must not be empty"),
    ],
)
def test_parse_max_memory_bad(text: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_max_memory(text)
    assert message in str(error.value)
