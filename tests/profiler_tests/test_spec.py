"""Spec files: every shipped spec loads as described, exports round-trip, errors are one line."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from profiler.spec import CPU_KERNEL_S
from profiler.spec import DEFAULT_HOST_OVERHEADS
from profiler.spec import DEFAULT_KERNEL_S
from profiler.spec import FLOPS_DTYPES
from profiler.spec import SPECS_DIR
from profiler.spec import default_kernel_s
from profiler.spec import dump_spec
from profiler.spec import load_spec
from profiler.spec import shipped_specs
from tuner.core.domain import HardwareProfile
from tuner.core.exceptions import SpecError

MiB, GiB = 1 << 20, 1 << 30

#: What each shipped spec promises: GPU names and memory (nvidia-smi's total), host RAM, disk.
SHIPPED: dict[str, dict[str, Any]] = {
    "1xA10G-24GB": {"gpus": ["NVIDIA A10G"], "gpu_memory": 23028 * MiB, "ram": 64 * GiB},
    "1xRTX3090-24GB": {"gpus": ["NVIDIA GeForce RTX 3090"], "gpu_memory": 24576 * MiB, "ram": 64 * GiB},
    "1xRTX4090-24GB": {"gpus": ["NVIDIA GeForce RTX 4090"], "gpu_memory": 24564 * MiB, "ram": 32 * GiB},
    "1xT4-16GB": {"gpus": ["NVIDIA Tesla T4"], "gpu_memory": 15360 * MiB, "ram": 52 * GiB},
    "2xA100-80GB-nvlink": {
        "gpus": ["NVIDIA A100 80GB PCIe"] * 2,
        "gpu_memory": 81920 * MiB,
        "ram": 256 * GiB,
    },
    "4xL4-24GB-pcie": {"gpus": ["NVIDIA L4"] * 4, "gpu_memory": 23034 * MiB, "ram": 192 * GiB},
    "rtx3090-rtx3060-pcie": {
        "gpus": ["NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 3060"],
        "gpu_memory": None,  # heterogeneous: checked in its own test
        "ram": 64 * GiB,
    },
    "8xH100-80GB-nvlink": {
        "gpus": ["NVIDIA H100 80GB HBM3"] * 8,
        "gpu_memory": 81559 * MiB,
        "ram": 2048 * GiB,
    },
}


def gpus(hardware: HardwareProfile) -> list[str]:
    return [d.key for d in hardware.devices if d.kind == "cuda"]


# ---- shipped specs -------------------------------------------------------------------------


def test_shipped_names_and_titles() -> None:
    names = shipped_specs()
    assert sorted(names) == sorted(SHIPPED)
    assert all(title.strip() for title in names.values())
    assert "DGX H100" in names["8xH100-80GB-nvlink"]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spec_loads_as_described(name: str) -> None:
    expected = SHIPPED[name]
    hardware = load_spec(name)
    assert hardware.source == "spec"
    assert [hardware.device(key).name for key in gpus(hardware)] == expected["gpus"]
    assert hardware.device("cpu").total_memory == expected["ram"]
    assert hardware.device("disk").kind == "disk"
    n = len(expected["gpus"])
    # Both directions host <-> each GPU, every ordered GPU pair, and disk -> cpu.
    assert len(hardware.links) == 2 * n + n * (n - 1) + 1
    for key in gpus(hardware):
        device = hardware.device(key)
        if expected["gpu_memory"] is not None:
            assert device.total_memory == device.free_memory == expected["gpu_memory"]
        assert set(device.peak_flops) == set(FLOPS_DTYPES)
        # Dense tensor-core figures: half precision faster than FP32, and no sparsity doubling past
        # what any of these GPUs has (the fastest dense figure shipped is the H100's 989.4 TFLOPS).
        # Turing (the T4) has no bfloat16 tensor cores: its bfloat16 runs at the FP32 rate.
        assert device.peak_flops["float16"] > device.peak_flops["float32"]
        assert device.peak_flops["float32"] <= device.peak_flops["bfloat16"] <= device.peak_flops["float16"]
        assert device.peak_flops["float16"] <= 989.4e12
        assert device.memory_bandwidth > 0
        assert device.runtime_overhead == GiB // 2
        assert hardware.link("cpu", key).beta_bytes_per_s == hardware.link(key, "cpu").beta_bytes_per_s
    # Every compute device, the cpu included, can be priced by a roofline in any dtype.
    for device in hardware.compute_devices:
        assert set(device.peak_flops) == set(FLOPS_DTYPES), device.key
        assert device.memory_bandwidth > 0, device.key


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_figure_cites_a_source(name: str) -> None:
    document = json.loads((SPECS_DIR / f"{name}.json").read_text())
    assert document["comment"].strip()
    entries = document["devices"] + document.get("links", []) + list(document.get("topology", {}).values())
    for entry in entries:
        source = entry["source"]
        texts = source if isinstance(source, list) else [source]
        assert texts and all(text.strip() for text in texts), entry
    for device in document["devices"]:
        if device["kind"] == "cuda":
            cited = " ".join(device["source"])
            for field in ("memory:", "peak_flops:", "memory_bandwidth:", "runtime_overhead: ESTIMATE"):
                assert field in cited, (device["key"], field)
            assert "dense" in cited


def test_h100_spec_expands_the_nvlink_shorthand() -> None:
    hardware = load_spec("8xH100-80GB-nvlink")
    assert gpus(hardware) == [str(i) for i in range(8)]
    assert all(hardware.device(key).total_memory == 81559 * MiB for key in gpus(hardware))
    peer = [link for link in hardware.links if link.src.isdigit() and link.dst.isdigit()]
    assert len(peer) == 56
    keys = gpus(hardware)
    assert {(link.src, link.dst) for link in peer} == {(a, b) for a in keys for b in keys if a != b}
    assert {link.beta_bytes_per_s for link in peer} == {360e9}  # 80% of NVLink 4's 450 GB/s per direction
    assert hardware.link("cpu", "7").beta_bytes_per_s == 50.4e9  # 80% of PCIe 5.0 x16
    assert hardware.device("0").peak_flops["bfloat16"] == 989.4e12


def test_heterogeneous_desktop() -> None:
    hardware = load_spec("rtx3090-rtx3060-pcie")
    assert hardware.device("0").total_memory == 24576 * MiB
    assert hardware.device("1").total_memory == 12288 * MiB
    assert hardware.device("0").peak_flops["float16"] > hardware.device("1").peak_flops["float16"]
    # No peer to peer on GeForce: a GPU to GPU copy is slower than either host link.
    assert hardware.link("0", "1").beta_bytes_per_s < hardware.link("cpu", "1").beta_bytes_per_s


# ---- export -> load round trip -------------------------------------------------------------


def test_export_then_load_round_trips(this_machine: HardwareProfile, tmp_path: Path) -> None:
    path = tmp_path / "this-box.json"
    dump_spec(this_machine, path)
    for source in (path, str(path)):
        loaded = load_spec(source)
        assert loaded.fingerprint == this_machine.fingerprint
        assert loaded.devices == this_machine.devices
        assert loaded.links == this_machine.links
        assert loaded.page_cache == this_machine.page_cache is not None
        assert loaded.host == this_machine.host
        assert loaded.source == "spec"
    document = json.loads(path.read_text())
    assert all("measured" in device["source"] for device in document["devices"])

    # a kernel cost too small to see on a noisy host (measured 0) stays 0, not the cpu's default
    unseen = dataclasses.replace(
        this_machine,
        devices=tuple(dataclasses.replace(device, kernel_s=0.0) for device in this_machine.devices),
    )
    dump_spec(unseen, path)
    assert load_spec(path).devices == unseen.devices


def test_export_of_a_spec_round_trips(tmp_path: Path) -> None:
    spec = load_spec("4xL4-24GB-pcie")
    dump_spec(spec, tmp_path / "copy.json")
    again = load_spec(tmp_path / "copy.json")
    assert (again.devices, again.links, again.fingerprint) == (spec.devices, spec.links, spec.fingerprint)
    # not "this machine": a spec's profile is some other machine, named as asked
    assert json.loads((tmp_path / "copy.json").read_text())["name"].startswith("a spec profile exported on ")
    dump_spec(spec, tmp_path / "named.json", name="4x L4, our copy")
    assert json.loads((tmp_path / "named.json").read_text())["name"] == "4x L4, our copy"


def test_export_to_a_missing_folder_is_one_line(this_machine: HardwareProfile, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"^cannot write spec .*missing") as error:
        dump_spec(this_machine, tmp_path / "missing" / "box.json")
    assert "\n" not in str(error.value)


# ---- hand-written specs: shorthands and one-line errors -----------------------------------


def minimal() -> dict[str, Any]:
    """Two GPUs, a cpu and a disk, written with the shorthands."""
    return {
        "name": "test box",
        "comment": "for tests",
        "devices": [
            {"key": "cpu", "kind": "cpu", "name": "cpu", "memory": "64GiB", "source": "test"},
            {
                "key": "0",
                "kind": "cuda",
                "name": "gpu",
                "memory": "24GiB",
                "free_memory": "20GiB",
                "peak_flops": {"float32": 30e12, "bfloat16": 120e12},
                "memory_bandwidth": "600GB/s",
                "runtime_overhead": "0.5GiB",
                "source": ["memory: test", "peak_flops: test"],
            },
            {
                "key": "1",
                "kind": "cuda",
                "name": "gpu",
                "memory": 24 * GiB,
                "peak_flops": {"float32": 30e12},
                "memory_bandwidth": 600e9,
                "source": "test",
            },
            {"key": "disk", "kind": "disk", "name": "nvme", "memory": "1TB", "source": "test"},
        ],
        "links": [{"src": "0", "dst": "1", "alpha": 1e-6, "beta": 100e9, "source": "measured by hand"}],
        "topology": {
            "gpu_to_gpu": {"alpha": 2e-5, "beta": 10e9, "source": "test"},
            "host_to_gpu": {"alpha": 1e-5, "beta": "25GB/s", "source": "test"},
            "disk_read": {"alpha": 1e-4, "beta": 2e9, "source": "test"},
        },
    }


def write(tmp_path: Path, document: object, name: str = "box.json") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def error_of(path: Path | str) -> str:
    with pytest.raises(SpecError) as error:
        load_spec(path)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_minimal_spec_reads_sizes_rates_and_shorthands(tmp_path: Path) -> None:
    hardware = load_spec(write(tmp_path, minimal()))
    gpu0 = hardware.device("0")
    assert (gpu0.total_memory, gpu0.free_memory, gpu0.runtime_overhead) == (24 * GiB, 20 * GiB, GiB // 2)
    assert gpu0.memory_bandwidth == 600e9
    assert hardware.device("1").free_memory == 24 * GiB  # free defaults to memory
    assert hardware.device("disk").total_memory == 10**12
    assert hardware.link("0", "1").beta_bytes_per_s == 100e9  # listed: wins over the shorthand
    assert hardware.link("1", "0").beta_bytes_per_s == 10e9  # from gpu_to_gpu
    assert hardware.link("cpu", "1").beta_bytes_per_s == 25e9
    assert hardware.link("disk", "cpu").alpha_s == 1e-4
    assert len(hardware.links) == 7
    assert hardware.host == ""


def set_path(document: dict[str, Any], path: tuple[Any, ...], value: object) -> None:
    target: Any = document
    for step in path[:-1]:
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("devices", 1, "memory"), DELETE, "devices[1].memory: missing"),
        (("links", 0, "beta"), -5, "links[0].beta: must be positive (got -5)"),
        (
            ("topology", "host_to_gpu", "beta"),
            "-25GB/s",
            "topology.host_to_gpu.beta: a size must not be negative",
        ),
        (
            ("devices", 1, "peak_flops", "fp8"),
            1e15,
            "devices[1].peak_flops: unknown dtype 'fp8' (use float32, float16, bfloat16)",
        ),
        (("links", 0, "dst"), "3", "links[0].dst: no device '3' (have 0, 1, cpu, disk)"),
        (("devices", 0, "memory"), "64gb", "devices[0].memory: '64gb' is ambiguous"),
        (("devices", 0, "memory"), -1, "devices[0].memory: must not be negative (got -1)"),
        (("devices", 1, "memory"), 0, "devices[1].memory: must be positive (got 0)"),
        (
            ("devices", 1, "memory"),
            "24TB",
            "devices[1].memory: 21.8 TiB is more than any cuda device holds (at most 4.0 TiB here): "
            "a unit written wrong?",
        ),
        (("devices", 1, "memory"), "9" * 30 + "GiB", "devices[1].memory: 976562500000000019418578944.0 TiB"),
        (("devices", 0, "memory"), "300TiB", "devices[0].memory: 300.0 TiB is more than any cpu device"),
        (
            ("devices", 1, "memory"),
            24,
            "devices[1].memory: 24 bytes: a bare number is bytes; write a size such as '24GiB'",
        ),
        (("devices", 1, "memory"), "24", "devices[1].memory: 24 bytes: a bare number is bytes"),
        (("devices", 1, "free_memory"), "20", "devices[1].free_memory: 20 bytes: a bare number is bytes"),
        (("devices", 1, "free_memory"), "30GiB", "devices[1].free_memory: more than memory"),
        (("devices", 1, "kind"), "gpu", "devices[1].kind: unknown kind 'gpu' (use cuda, mps, cpu, disk)"),
        (
            ("devices", 1, "key"),
            "gpu1",
            "devices[1].key: a cuda device's key is its index (0, 1, ...), got 'gpu1'",
        ),
        (("devices", 2, "key"), "0", "devices[2].key: device '0' is listed twice (also devices[1])"),
        (("devices", 2, "key"), "2", "devices: GPU keys must be 0, 1, ... without gaps"),
        (("devices", 1, "memroy"), "24GiB", "devices[1].memroy: unknown field"),
        (("devices", 1, "memory_bandwidth"), DELETE, "devices[1].memory_bandwidth: missing"),
        (("devices", 1, "peak_flops"), {}, "devices[1].peak_flops: give FLOP/s for at least one of"),
        (
            ("devices", 1, "peak_flops", "float32"),
            "fast",
            'devices[1].peak_flops.float32: expected a number of FLOP/s, got "fast"',
        ),
        (("devices", 1, "source"), DELETE, "devices[1].source: missing (where its figures come from"),
        (("devices", 1, "source"), "  ", "devices[1].source: must not be empty"),
        (("links", 0, "alpha"), -1e-6, "links[0].alpha: must not be negative"),
        (("links", 0, "dst"), "0", "links[0]: a link joins two devices, not '0' to itself"),
        (
            ("topology", "gpu_to_gpu"),
            DELETE,
            "links: no link 1 -> 0 (list it under links or give topology.gpu_to_gpu)",
        ),
        (("topology", "disk_read"), DELETE, "links: no link disk -> cpu"),
        (("topology", "warp_drive"), {}, "topology.warp_drive: unknown field"),
        (("name",), DELETE, "name: missing"),
        (("devices",), [], "devices: expected a non-empty list of devices"),
    ],
)
def test_one_line_errors_name_file_and_field(
    tmp_path: Path, path: tuple[Any, ...], value: object, expected: str
) -> None:
    document = copy.deepcopy(minimal())
    set_path(document, path, value)
    spec = write(tmp_path, document)
    assert error_of(spec).startswith(f"spec {spec}: {expected}")


def test_disk_read_without_a_disk(tmp_path: Path) -> None:
    document = minimal()
    document["devices"] = document["devices"][:3]
    assert error_of(write(tmp_path, document)).endswith(
        "topology.disk_read: no device 'disk' (add a device with kind 'disk', or drop disk_read)"
    )


def test_a_spec_needs_one_cpu(tmp_path: Path) -> None:
    document = minimal()
    document["devices"] = document["devices"][1:]
    assert "devices: exactly one device must have kind 'cpu'" in error_of(write(tmp_path, document))


def test_duplicate_link(tmp_path: Path) -> None:
    document = minimal()
    document["links"].append(dict(document["links"][0]))
    message = error_of(write(tmp_path, document))
    assert message.endswith("links[1]: link 0 -> 1 is listed twice (also links[0])")


def test_invalid_json(tmp_path: Path) -> None:
    spec = write(tmp_path, '{"name": "box", "devices": [', name="broken.json")
    message = error_of(spec)
    assert message.startswith(f"spec {spec}: not valid JSON: ")
    assert "(line 1, column" in message


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    spec = write(tmp_path, "[1, 2]", name="list.json")
    assert error_of(spec) == f"spec {spec}: top level: expected a JSON object, got a list"


def test_unknown_shipped_name_lists_the_shipped_ones() -> None:
    message = error_of("3xA100-nope")
    assert message.startswith("no spec file or shipped spec named '3xA100-nope' (shipped specs: ")
    for name in SHIPPED:
        assert name in message


@pytest.mark.parametrize(
    ("asked", "meant"),
    [("1xt4-16gb", "1xT4-16GB"), ("8xH100", "8xH100-80GB-nvlink"), ("1xA10G-24G", "1xA10G-24GB")],
)
def test_a_name_near_a_shipped_one_is_told_its_spelling(asked: str, meant: str) -> None:
    assert error_of(asked).startswith(
        f"no spec file or shipped spec named {asked!r}; did you mean {meant!r}? (shipped specs: "
    )


def test_a_name_longer_than_any_file_name_is_refused_in_one_short_line() -> None:
    message = error_of("x" * 400)  # the file system refuses to look it up (ENAMETOOLONG)
    assert message.startswith(f"no spec file or shipped spec named '{'x' * 80}...' (shipped specs: ")
    assert "\n" not in message and len(message) < 400


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    assert error_of(missing).startswith(f"spec {missing}: no such file (shipped specs: 1xA10G-24GB")
    assert error_of(str(missing)).startswith(f"spec {missing}: no such file")


@pytest.mark.parametrize("blank", ["", "  "])
def test_no_name_is_refused_as_such(blank: str) -> None:
    # not read as the current folder ("Is a directory: '.'")
    assert error_of(blank).startswith("spec: no name given; name a spec file or a shipped spec (shipped ")


# ---- large specs ---------------------------------------------------------------------------


def many_gpus(count: int) -> dict[str, Any]:
    """`minimal` with `count` GPUs alike, every link from the shorthands."""
    document = minimal()
    gpu = document["devices"][2]
    document["devices"] = [
        document["devices"][0],
        *({**gpu, "key": str(k)} for k in range(count)),
        document["devices"][3],
    ]
    document["links"] = []
    return document


def test_a_large_spec_expands_every_pair_once(tmp_path: Path) -> None:
    hardware = load_spec(write(tmp_path, many_gpus(300)))
    assert len(hardware.links) == 300 * 299 + 2 * 300 + 1
    assert len({(link.src, link.dst) for link in hardware.links}) == len(hardware.links)
    assert hardware.link("299", "0").beta_bytes_per_s == 10e9


def test_a_large_spec_without_a_shorthand_names_the_first_missing_link(tmp_path: Path) -> None:
    document = many_gpus(300)
    del document["topology"]["gpu_to_gpu"]
    document["links"] = [{"src": "0", "dst": "1", "alpha": 1e-6, "beta": 1e9, "source": "test"}]
    assert error_of(write(tmp_path, document)).endswith(
        "links: no link 0 -> 2 (list it under links or give topology.gpu_to_gpu)"
    )


# ---- pageable host links, per-kernel cost, host overheads ----------------------------------


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_specs_give_pageable_host_links_slower_than_pinned(name: str) -> None:
    hardware = load_spec(name)
    assert hardware.pinned_only == ()
    for key in gpus(hardware):
        for src, dst in (("cpu", key), (key, "cpu")):
            pageable, is_pageable = hardware.host_copy(src, dst)
            pinned = hardware.link(src, dst)
            assert is_pageable
            assert pageable.beta_bytes_per_s < pinned.beta_bytes_per_s
            assert pageable.alpha_s > pinned.alpha_s


def test_a_spec_without_pageable_links_falls_back_to_pinned_and_says_so(tmp_path: Path) -> None:
    hardware = load_spec(write(tmp_path, minimal()))
    assert hardware.pageable == ()
    assert set(hardware.pinned_only) == {"cpu->0", "0->cpu", "cpu->1", "1->cpu"}
    link, is_pageable = hardware.host_copy("cpu", "1")
    assert not is_pageable and link == hardware.link("cpu", "1")


def test_pageable_links_listed_win_over_their_shorthand(tmp_path: Path) -> None:
    document = minimal()
    document["topology"]["host_to_gpu_pageable"] = {"alpha": 5e-5, "beta": "12GB/s", "source": "test"}
    document["pageable_links"] = [{"src": "cpu", "dst": "1", "alpha": 4e-5, "beta": 6e9, "source": "test"}]
    hardware = load_spec(write(tmp_path, document))
    assert hardware.pinned_only == ()
    assert hardware.host_copy("cpu", "1")[0].beta_bytes_per_s == 6e9
    assert hardware.host_copy("1", "cpu")[0].beta_bytes_per_s == 12e9
    assert hardware.host_copy("cpu", "0")[0].alpha_s == 5e-5


def test_a_pageable_link_must_touch_the_cpu(tmp_path: Path) -> None:
    document = minimal()
    document["pageable_links"] = [{"src": "0", "dst": "1", "alpha": 4e-5, "beta": 6e9, "source": "test"}]
    assert "pageable_links[0]: a pageable link joins the cpu and an accelerator" in error_of(
        write(tmp_path, document)
    )


def test_a_gpu_without_kernel_overhead_gets_its_generation_default(tmp_path: Path) -> None:
    document = minimal()
    document["devices"][1]["name"] = "NVIDIA H100 80GB HBM3"
    document["devices"][2]["kernel_overhead"] = 3e-6
    hardware = load_spec(write(tmp_path, document))
    hopper = next(seconds for generation, _, seconds, _ in DEFAULT_KERNEL_S if generation == "Hopper")
    assert hardware.device("0").kernel_s == hopper == default_kernel_s("NVIDIA H100 80GB HBM3")[0]
    assert hardware.device("1").kernel_s == 3e-6
    assert hardware.device("cpu").kernel_s == 0.0  # no speeds: never a compute device
    document["devices"][0]["peak_flops"] = {"float32": 1e12}
    assert load_spec(write(tmp_path, document, "fast-cpu.json")).device("cpu").kernel_s == CPU_KERNEL_S[0]
    assert "Volta" in default_kernel_s("Tesla V100-SXM2-16GB")[1]


def test_host_overheads_are_read_or_defaulted(tmp_path: Path) -> None:
    defaulted = load_spec(write(tmp_path, minimal()))
    assert (
        defaulted.generate_step_s,
        defaulted.hook_call_s,
        defaulted.safetensors_entry_s,
        defaulted.forward_call_s,
    ) == DEFAULT_HOST_OVERHEADS[:4]
    document = minimal()
    document["host_overheads"] = {"generate_step": 1e-4, "hook_call": 5e-6, "source": "test"}
    given = load_spec(write(tmp_path, document, "given.json"))
    assert (given.generate_step_s, given.hook_call_s) == (1e-4, 5e-6)
    # optional within the object
    assert (given.safetensors_entry_s, given.forward_call_s) == DEFAULT_HOST_OVERHEADS[2:4]
    document["host_overheads"]["forward_call"] = 2.5e-4
    assert load_spec(write(tmp_path, document, "forward.json")).forward_call_s == pytest.approx(250e-6)
    document["host_overheads"]["hook_call"] = -1
    assert "host_overheads.hook_call: must not be negative (got -1)" in error_of(
        write(tmp_path, document, "bad.json")
    )


def test_export_keeps_pageable_links_kernel_costs_and_host_overheads(tmp_path: Path) -> None:
    document = minimal()
    document["topology"]["host_to_gpu_pageable"] = {"alpha": 5e-5, "beta": "12GB/s", "source": "test"}
    document["host_overheads"] = {"generate_step": 1e-4, "hook_call": 5e-6, "safetensors_entry": 2e-6,
                                  "forward_call": 3e-4, "source": "test"}  # fmt: skip
    hardware = load_spec(write(tmp_path, document))
    dump_spec(hardware, tmp_path / "again.json")
    again = load_spec(tmp_path / "again.json")
    assert again.pageable == hardware.pageable
    assert [d.kernel_s for d in again.devices] == [d.kernel_s for d in hardware.devices]
    assert (again.generate_step_s, again.hook_call_s, again.safetensors_entry_s) == (1e-4, 5e-6, 2e-6)
    assert again.forward_call_s == 3e-4
