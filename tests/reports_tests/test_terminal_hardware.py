"""The hardware tables: every device and link of a small machine, a summary of a large one."""

from __future__ import annotations

import dataclasses

from rich.console import Console
from rich.table import Table

from reports.terminal import hardware_tables
from reports.terminal import host_note
from tuner.core.domain import Device
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link

GB = 10**9


def machine(gpus: int, *, odd_one: bool = False) -> HardwareProfile:
    """`gpus` GPUs alike (the last one slower with `odd_one`), every pair linked, a cpu, a disk."""
    keys = [str(k) for k in range(gpus)]
    devices = [Device("cpu", "cpu", "host", 64 * GB, 64 * GB)]
    slow = keys[-1] if odd_one else None
    flops = {k: {"bfloat16": 5e14 if k == slow else 1e15} for k in keys}
    devices += [Device(k, "cuda", "gpu", 80 * GB, 80 * GB, flops[k]) for k in keys]
    devices.append(Device("disk", "disk", "nvme", 1000 * GB, 1000 * GB))
    links = [Link("disk", "cpu", 1e-4, 2 * GB)]
    for k in keys:
        links += [Link("cpu", k, 1e-5, 25 * GB), Link(k, "cpu", 1e-5, 25 * GB)]
        links += [Link(k, j, 5e-6, 300 * GB) for j in keys if j != k]
    return HardwareProfile(tuple(devices), tuple(links), source="spec")


def text(table: Table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def rows(table: Table) -> list[list[str]]:
    cells = [[str(cell) for cell in column.cells] for column in table.columns]
    return [list(row) for row in zip(*cells, strict=True)]


def test_a_small_machine_lists_every_device_and_link() -> None:
    devices, links = hardware_tables(machine(2))
    assert [row[0] for row in rows(devices)] == ["cpu", "0", "1", "disk"]
    assert len(rows(links)) == 7


def test_a_large_machine_groups_alike_devices_and_links() -> None:
    devices, links = hardware_tables(machine(40, odd_one=True))
    assert [row[:3] for row in rows(devices)] == [
        ["cpu", "1", "cpu"], ["0-38", "39", "cuda"], ["39", "1", "cuda"], ["disk", "1", "disk"],
    ]  # fmt: skip
    assert [row[:3] for row in rows(links)] == [
        ["disk", "cpu", "1"], ["cpu", "0-39", "40"], ["0-39", "cpu", "40"], ["0-39", "0-39", "1560"],
    ]  # fmt: skip
    assert "1641 in 4 rows" in text(links)
    assert "42 in 4 groups" in text(devices)


def test_a_summary_can_be_asked_for() -> None:
    devices, links = hardware_tables(machine(2), summary=True)
    assert [row[:2] for row in rows(devices)] == [["cpu", "1"], ["0-1", "2"], ["disk", "1"]]
    assert [row[2] for row in rows(links)] == ["1", "2", "2", "2"]


def test_the_host_note_gives_each_fixed_cost() -> None:
    hardware = dataclasses.replace(
        machine(1),
        forward_call_s=4e-4,
        generate_step_s=3e-4,
        hook_call_s=4.2e-5,
        safetensors_entry_s=1.62e-6,
    )
    note = host_note(hardware)
    assert "a forward's own Python: 400 µs per call" in note
    assert "generate: 300 µs per token" in note
    assert "accelerate's hooks: 42 µs per hooked module call" in note
    assert "a read from disk: 1.62 µs per tensor its checkpoint's header lists" in note


def test_the_host_note_names_spec_devices_that_keep_no_memory_for_the_runtime() -> None:
    bare = machine(2)  # no runtime_overhead on any device
    assert "no runtime_overhead for cpu, 0, 1: a map may fill them to the last byte" in host_note(bare)
    kept = dataclasses.replace(
        bare,
        devices=tuple(
            d if d.kind == "disk" else dataclasses.replace(d, runtime_overhead=GB // 2) for d in bare.devices
        ),
    )
    assert "runtime_overhead" not in host_note(kept)
    assert "runtime_overhead" not in host_note(dataclasses.replace(bare, source="measured"))
