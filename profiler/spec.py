"""Hardware spec files: a machine you do not have, written down as JSON.

A spec file describes devices and links with datasheet figures instead of measurements, so the
tuner can plan for an 8-GPU server from a laptop. `dump_spec` writes a measured profile in the
same format (``tuner hardware --export FILE`` on the target machine), and `load_spec` reads
either kind back into a `HardwareProfile` with source ``spec``.

The format, one JSON object::

    {
      "name": "2x NVIDIA A100 80GB PCIe, NVLink bridge",
      "comment": "what machine this is, and the assumptions behind it",
      "host": "optional: the host identity a measured profile carries",
      "devices": [
        {"key": "cpu", "kind": "cpu", "name": "...", "memory": "256GiB", "source": "..."},
        {"key": "0", "kind": "cuda", "name": "NVIDIA A100 80GB PCIe", "memory": "81920MiB",
         "free_memory": "81920MiB",                         (optional, defaults to memory)
         "peak_flops": {"float32": 19.5e12, "bfloat16": 312e12, "float16": 312e12},
         "memory_bandwidth": 1935e9,                         (bytes/s, or "1935GB/s")
         "runtime_overhead": "0.5GiB",                       (optional, default 0)
         "kernel_overhead": 6e-6,       (optional: seconds per kernel in eager PyTorch; a GPU
                                         without it gets its generation's default, see below)
         "source": "where every figure above comes from"}  (a string or a list of strings)
      ],
      "links": [{"src": "0", "dst": "1", "alpha": 5e-6, "beta": 240e9, "source": "..."}],
      "pageable_links": [{"src": "cpu", "dst": "0", ...}],  (optional: as links, for copies from
                                                       and to pageable host memory)
      "topology": {                                          (optional shorthands)
        "gpu_to_gpu":  {"alpha": ..., "beta": ..., "source": ...},  every ordered GPU pair
        "host_to_gpu": {"alpha": ..., "beta": ..., "source": ...},  cpu -> i and i -> cpu (pinned)
        "host_to_gpu_pageable": {...},         cpu -> i and i -> cpu from pageable memory (optional)
        "disk_read":   {"alpha": ..., "beta": ..., "source": ...}   disk -> cpu
      },
      "page_cache_read": {"alpha": ..., "beta": ..., "source": ...}  (optional) disk -> cpu when
                                                       the host's RAM caches the offloaded file
      "host_overheads": {"generate_step": 2e-4, "hook_call": 8e-6,          (optional)
                         "safetensors_entry": 1.5e-6, "forward_call": 4e-4, "source": ...}
    }

Pageable host links are what accelerate's hooks copy an offloaded unit's weights over (one
synchronous copy per tensor from unpinned memory); a spec without them (older files) is priced
on its pinned ``host_to_gpu`` links instead, which `HardwareProfile.pinned_only` lists and
``tuner hardware --spec`` says. A GPU without ``kernel_overhead`` gets the default of its
generation (`DEFAULT_KERNEL_S`, found from its name), a cpu with speeds `CPU_KERNEL_S`, and a
spec without ``host_overheads`` the
figures `DEFAULT_HOST_OVERHEADS` gives, each with its source.

A link listed under ``links`` wins over the shorthand for the same pair. Every object may carry a
``comment``. After the shorthands are applied, every link the cost model prices must exist: both
directions between the cpu and each accelerator, every ordered accelerator pair, and disk -> cpu
when there is a disk. Memory sizes follow `tuner.core.sizes.parse_bytes` (``"80GiB"``, ``"24GB"``,
or an integer); bandwidths are bytes per second, as a number or ``"25GB/s"``; FLOP/s are numbers.

Every problem is a `SpecError` whose one-line message names the file and the field, e.g.
``spec a100.json: devices[1].memory: missing``.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Collection
from collections.abc import Iterator
from datetime import datetime
from datetime import timezone
from pathlib import Path
from typing import Any
from typing import NoReturn

from tuner.core.devices import is_gpu
from tuner.core.domain import Device
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.exceptions import SpecError
from tuner.core.sizes import format_bytes
from tuner.core.sizes import parse_bytes

__all__ = [
    "CPU_KERNEL_S",
    "DEFAULT_HOST_OVERHEADS",
    "DEFAULT_KERNEL_S",
    "FLOPS_DTYPES",
    "SPECS_DIR",
    "default_kernel_s",
    "dump_spec",
    "is_bare_name",
    "load_spec",
    "shipped_specs",
]

#: Folder of the specs that ship with the tuner; ``--spec NAME`` looks here.
SPECS_DIR = Path(__file__).parent / "specs"

#: The dtypes a spec may give matmul FLOP/s for (those the tuner runs models in).
FLOPS_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")

_KINDS = ("cuda", "mps", "cpu", "disk")
_ACCELERATORS = ("cuda", "mps")

_TOP_FIELDS = (
    "name",
    "comment",
    "host",
    "devices",
    "links",
    "pageable_links",
    "topology",
    "page_cache_read",
    "host_overheads",
)
_DEVICE_FIELDS = (
    "key",
    "kind",
    "name",
    "memory",
    "free_memory",
    "peak_flops",
    "memory_bandwidth",
    "runtime_overhead",
    "kernel_overhead",
    "source",
    "comment",
)
_LINK_FIELDS = ("src", "dst", "alpha", "beta", "source", "comment")
_SHORTHAND_FIELDS = ("alpha", "beta", "source", "comment")
_TOPOLOGY_FIELDS = ("gpu_to_gpu", "host_to_gpu", "host_to_gpu_pageable", "disk_read")
_HOST_OVERHEAD_FIELDS = (
    "generate_step",
    "hook_call",
    "safetensors_entry",
    "forward_call",
    "source",
    "comment",
)
#: The order shorthands add links in, and the order missing links are reported in.
_LINK_ORDER = ("host_to_gpu", "gpu_to_gpu", "disk_read")

#: Seconds per kernel for a spec's cpu that gives speeds but no ``kernel_overhead``: eager
#: PyTorch on the cpu runs a layer's Python and the dispatcher around every operator, and the
#: host waits on both, so the cost adds to the kernels' work.
CPU_KERNEL_S = (
    13e-6,
    "ESTIMATE: measured by `tuner hardware` on this project's development machine (2-core AMD EPYC, "
    "torch 2.13, transformers 5.23): one more kernel of a tiny Llama's layer in a decode step cost "
    "13.1-13.8 us in its fastest rounds (a bare in-place add: 3.7-3.9 us)",
)

#: Seconds per kernel in eager PyTorch for a GPU whose spec gives no ``kernel_overhead``, by
#: generation: (generation, substrings of the device name, seconds, source). The first match wins;
#: a name matching none gets `_OTHER_GPU_KERNEL_S`. The figure is what `tuner hardware` would
#: measure there (`profiler.hardware.overheads`): what one more kernel of a model's layer costs,
#: which at a small decode step is the host's work around it (the layer's Python, the ATen
#: dispatcher, the caching allocator, the driver's launch), so a figure of the eager stack on the
#: server's CPU more than of the GPU. No generation has a published figure for a transformers layer,
#: so all take the one measured on this project's development machine, `CPU_KERNEL_S`.
_HOST_KERNEL_SOURCE = (
    "ESTIMATE: what one more kernel of a transformers layer costs a host, as `tuner hardware` "
    "measured it on this project's development machine (2-core AMD EPYC, torch 2.13, transformers "
    "5.23): 13.1-13.8 us in its fastest rounds; on a GPU the cpu kernel's own work gives way to a "
    "launch of about the same cost (NVIDIA, 'Getting Started with CUDA Graphs', A. Gray, 2019: "
    "3.8 us per launch of a short kernel)"
)
DEFAULT_KERNEL_S: tuple[tuple[str, tuple[str, ...], float, str], ...] = (
    (
        "Hopper",
        ("H100", "H200", "H800", "GH200"),
        CPU_KERNEL_S[0],
        f"{_HOST_KERNEL_SOURCE}. Leaner eager code pays less: a published Llama 3.1 8B decode step "
        "on an H100 SXM5, 8.4 ms eager and 5.1 ms as one CUDA graph (cloudai.pt, 'CUDA Graphs + "
        "torch.compile: 1.65x LLM Decode Speedup', its code not given), is 2.5 us per kernel over "
        "the 1,299 kernels this tool counts in transformers' step",
    ),
    ("Ada", ("L4", "L40", "RTX 40", "RTX 6000 Ada", "RTX 5000 Ada"), CPU_KERNEL_S[0], _HOST_KERNEL_SOURCE),
    (
        "Ampere",
        ("A100", "A10", "A30", "A40", "A16", "A2", "RTX 30", "RTX A"),
        CPU_KERNEL_S[0],
        _HOST_KERNEL_SOURCE,
    ),
    ("Volta/Turing", ("V100", "T4", "RTX 20", "TITAN V", "Quadro RTX"), CPU_KERNEL_S[0], _HOST_KERNEL_SOURCE),
)
_OTHER_GPU_KERNEL_S = CPU_KERNEL_S[0]

#: (generate step, hook call, safetensors header entry, forward call) seconds and their source,
#: for a spec without ``host_overheads`` (or without its optional ``safetensors_entry`` or
#: ``forward_call``): all are the host's own work in Python and Rust, so a figure measured on one
#: x86 server is a fair stand-in on another.
DEFAULT_HOST_OVERHEADS: tuple[float, float, float, float, str] = (
    2.0e-4,
    8.0e-6,
    1.0e-6,
    4.0e-4,
    "ESTIMATE: measured by `tuner hardware` on this project's development machine (2-core AMD "
    "EPYC, torch 2.13, transformers 5.23, accelerate 1.15, safetensors 0.7), the machine quiet: a "
    "4-layer tiny Llama generating 33 tokens with and without accelerate's hooks on every unit; "
    "one tensor read from safetensors files of 16 and 4096 tensors; decode steps of a 2- and an "
    "8-layer tiny Llama, the forward's cost beyond its kernels 306-584 us (median of 8 rounds 405 "
    "us); a server core is about as fast",
)


def default_kernel_s(name: str) -> tuple[float, str]:
    """Seconds per kernel for a GPU named `name`, and where the figure comes from."""
    for generation, markers, seconds, source in DEFAULT_KERNEL_S:
        if any(marker.lower() in name.lower() for marker in markers):
            return seconds, f"{generation} default: {source}"
    return _OTHER_GPU_KERNEL_S, f"default for a GPU of unknown generation: {_HOST_KERNEL_SOURCE}"


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load_spec(path_or_name: str | Path) -> HardwareProfile:
    """Read a spec file, or a spec shipped with the tuner, into a `HardwareProfile`.

    Args:
        path_or_name: a path to a JSON spec file, or the name of a shipped spec (a bare name
            such as ``2xA100-80GB-nvlink``, without folder or ``.json``; see `shipped_specs`).
            A bare name is looked up among the shipped specs first, then as a file.

    Returns:
        The profile, with source ``spec``; its devices and links are those of the file, the
        topology shorthands expanded.

    Raises:
        SpecError: the file does not exist, is not JSON, or a field is missing or invalid; the
            message is one line naming the file and the field.

    Example:
        >>> hardware = load_spec("8xH100-80GB-nvlink")
        >>> len([d for d in hardware.devices if d.kind == "cuda"]), len(hardware.links)
        (8, 73)
    """
    if not str(path_or_name).strip():
        raise SpecError(f"spec: no name given; name a spec file or a shipped spec{_shipped_hint()}")
    path, label = _resolve(path_or_name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec {label}: no such file{_shipped_hint()}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"spec {label}: cannot read it ({error})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecError(
            f"spec {label}: not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    return _SpecReader(label).hardware(document)


def dump_spec(hardware: HardwareProfile, path: Path, *, name: str | None = None) -> None:
    """Write `hardware` as a spec file that `load_spec` reads back to equal devices and links.

    Every link is written out (no shorthands), with the host identity, so the profile read back
    has the same fingerprint as `hardware`.

    Args:
        hardware: a measured profile (or any other).
        path: the file to write; its folder must exist.
        name: the spec's ``name``; by default, a measured profile's host (``this machine``
            without one), and for another profile, that it was exported (a profile read from a
            spec does not keep the spec's name).

    Raises:
        SpecError: the file cannot be written.
    """
    try:
        document = _spec_document(hardware)
        if name is not None:
            document["name"] = name
        Path(path).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        raise SpecError(f"cannot write spec {path}: {error}") from None


def _spec_document(hardware: HardwareProfile) -> dict[str, Any]:
    """The JSON document `dump_spec` writes, as plain data."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if hardware.source == "measured":
        origin = f"measured by `tuner hardware --export` on {when}"
        comment = (
            f"Measured on {hardware.host or 'an unnamed host'} at {when}: matmul FLOP/s and copy "
            "bandwidths are this machine's own, each the best of several samples; links are alpha-beta "
            "fits of timed copies."
        )
        if hardware.busy:
            comment += f" Measured while the machine was busy ({hardware.busy}): speeds may be low."
    else:
        origin = f"exported on {when} from a profile with source {hardware.source!r}"
        comment = f"Exported from a {hardware.source} profile on {when}."
    devices: list[dict[str, Any]] = []
    for device in hardware.devices:
        entry: dict[str, Any] = {
            "key": device.key,
            "kind": device.kind,
            "name": device.name,
            "memory": device.total_memory,
            "free_memory": device.free_memory,
        }
        if device.peak_flops:
            entry["peak_flops"] = dict(device.peak_flops)
        if device.memory_bandwidth:
            entry["memory_bandwidth"] = device.memory_bandwidth
        entry["runtime_overhead"] = device.runtime_overhead
        if device.kind != "disk":
            # written even when 0 (too small to measure on a noisy host), else reading it back
            # would give the kind's default
            entry["kernel_overhead"] = device.kernel_s
        entry["source"] = origin
        devices.append(entry)
    links = [
        {
            "src": link.src,
            "dst": link.dst,
            "alpha": link.alpha_s,
            "beta": link.beta_bytes_per_s,
            "source": origin,
        }
        for link in hardware.links
    ]
    document: dict[str, Any] = {
        "name": (
            f"{hardware.host or 'this machine'} (measured)"
            if hardware.source == "measured"
            else f"a {hardware.source} profile exported on {when}"
        ),
        "comment": comment,
        "host": hardware.host,
        "devices": devices,
        "links": links,
    }
    if hardware.pageable:
        document["pageable_links"] = [
            {"src": link.src, "dst": link.dst, "alpha": link.alpha_s, "beta": link.beta_bytes_per_s,
             "source": origin}
            for link in hardware.pageable
        ]  # fmt: skip
    if (
        hardware.generate_step_s
        or hardware.hook_call_s
        or hardware.safetensors_entry_s
        or hardware.forward_call_s
    ):
        document["host_overheads"] = {
            "generate_step": hardware.generate_step_s,
            "hook_call": hardware.hook_call_s,
            "safetensors_entry": hardware.safetensors_entry_s,
            "forward_call": hardware.forward_call_s,
            "source": origin,
        }
    if hardware.page_cache is not None:
        document["page_cache_read"] = {
            "alpha": hardware.page_cache.alpha_s,
            "beta": hardware.page_cache.beta_bytes_per_s,
            "source": origin,
        }
    return document


def shipped_specs() -> dict[str, str]:
    """The specs that ship with the tuner: file name (what ``--spec`` takes) -> its "name" field.

    Raises:
        SpecError: a shipped file is not valid JSON (a packaging mistake).
    """
    names: dict[str, str] = {}
    for path in sorted(SPECS_DIR.glob("*.json")):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SpecError(f"spec {path.stem}: cannot read the shipped spec ({error})") from None
        title = document.get("name") if isinstance(document, dict) else None
        names[path.stem] = title if isinstance(title, str) else ""
    return names


# --------------------------------------------------------------------------------------------
# Finding the file
# --------------------------------------------------------------------------------------------


def is_bare_name(text: str) -> bool:
    """Whether `text` names a spec as a shipped one is named: no folder, no ``.json``; a file of
    such a name is read only when no shipped spec has it."""
    return "/" not in text and "\\" not in text and not text.lower().endswith(".json")


def _resolve(path_or_name: str | Path) -> tuple[Path, str]:
    """The file to read and the label errors use: a bare name is a shipped spec."""
    if isinstance(path_or_name, Path):
        return path_or_name, str(path_or_name)
    text = str(path_or_name)
    bare = is_bare_name(text)
    if bare and text:
        shipped = SPECS_DIR / f"{text}.json"
        try:
            if shipped.is_file():
                return shipped, text
            found = Path(text).exists()
        except OSError:  # a name longer than the file system allows names no file
            found = False
        if not found:
            raise SpecError(f"no spec file or shipped spec named {_clipped(text)!r}{_shipped_hint(text)}")
    return Path(text), text


def _clipped(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def _shipped_hint(asked: str = "") -> str:
    names = sorted(path.stem for path in SPECS_DIR.glob("*.json"))
    if not names:
        return ""
    return f"{_meant(asked, names)} (shipped specs: {', '.join(names)})"


def _meant(asked: str, names: list[str]) -> str:
    """The shipped spec a name not found probably meant: spec names are case-sensitive (a run is
    stored under the name given), and `8xH100` or `1xh100-80gb` is told the spelling rather
    than left to find it in the list."""
    folded = {name.lower(): name for name in names}
    within = [name for name in names if asked and asked.lower() in name.lower()]
    close = difflib.get_close_matches(asked.lower(), list(folded), n=1)
    meant = folded.get(asked.lower()) or (within[0] if len(within) == 1 else None)
    meant = meant or (folded[close[0]] if close else None)
    return f"; did you mean {meant!r}?" if meant else ""


# --------------------------------------------------------------------------------------------
# Reading and validating
# --------------------------------------------------------------------------------------------


class _SpecReader:
    """Reads one spec document; every failure names the file and the field path."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, where: str, message: str) -> NoReturn:
        # a field's name is the file's own text: a newline in it must not break the one line
        line = f"spec {self.label}: {where}: {message}"
        raise SpecError("".join(c if c.isprintable() else repr(c)[1:-1] for c in line))

    # ---- the document ----------------------------------------------------------------------

    def hardware(self, document: object) -> HardwareProfile:
        if not isinstance(document, dict):
            self.fail("top level", f"expected a JSON object, got {_json_type(document)}")
        self.fields(document, "top level", _TOP_FIELDS, required=("name", "devices"))
        self.text(document["name"], "name")
        if "comment" in document:
            self.text(document["comment"], "comment", empty_ok=True)
        host = self.text(document["host"], "host", empty_ok=True) if "host" in document else ""

        raw_devices = document["devices"]
        if not isinstance(raw_devices, list) or not raw_devices:
            self.fail("devices", "expected a non-empty list of devices")
        devices: list[Device] = []
        seen: dict[str, int] = {}
        for index, raw in enumerate(raw_devices):
            device = self.device(raw, f"devices[{index}]")
            if device.key in seen:
                twice = f"device {device.key!r} is listed twice (also devices[{seen[device.key]}])"
                self.fail(f"devices[{index}].key", twice)
            seen[device.key] = index
            devices.append(device)
        self.check_device_set(devices)

        listed = self.links(document.get("links", []), devices)
        links = list(listed)
        shorthands: Collection[str] = ()
        if "topology" in document:
            links += self.topology(document["topology"], devices, {(link.src, link.dst) for link in listed})
            shorthands = set(document["topology"])
        self.check_complete(devices, listed, shorthands)
        page_cache = None
        if "page_cache_read" in document:
            page_cache = self.page_cache(document["page_cache_read"], devices)
        pageable = self.pageable(document, devices)
        generate_step, hook_call, entry, forward_call = self.host_overheads(document.get("host_overheads"))
        return HardwareProfile(
            devices=tuple(devices),
            links=tuple(links),
            source="spec",
            host=host,
            page_cache=page_cache,
            pageable=tuple(pageable),
            generate_step_s=generate_step,
            hook_call_s=hook_call,
            safetensors_entry_s=entry,
            forward_call_s=forward_call,
        )

    def pageable(self, document: dict[str, Any], devices: list[Device]) -> list[Link]:
        """Pageable host links: those listed under ``pageable_links``, then the shorthand's for
        the pairs they leave; only between the cpu and an accelerator."""
        listed = self.links(document.get("pageable_links", []), devices, where="pageable_links")
        for index, link in enumerate(listed):
            if "cpu" not in (link.src, link.dst) or "disk" in (link.src, link.dst):
                self.fail(f"pageable_links[{index}]", "a pageable link joins the cpu and an accelerator")
        topology = document.get("topology", {})
        if not isinstance(topology, dict) or "host_to_gpu_pageable" not in topology:
            return listed
        where = "topology.host_to_gpu_pageable"
        entry = topology["host_to_gpu_pageable"]
        if not isinstance(entry, dict):
            self.fail(where, f"expected an object with alpha, beta and source, got {_json_type(entry)}")
        self.fields(entry, where, _SHORTHAND_FIELDS, required=("alpha", "beta", "source"))
        alpha, beta = self.alpha_beta(entry, where)
        have = {(link.src, link.dst) for link in listed}
        return listed + [
            Link(src=src, dst=dst, alpha_s=alpha, beta_bytes_per_s=beta)
            for src, dst in _shorthand_pairs("host_to_gpu", devices)
            if (src, dst) not in have
        ]

    def host_overheads(self, raw: object) -> tuple[float, float, float, float]:
        """(generate step, hook call, safetensors header entry, forward call) seconds: the
        spec's, else `DEFAULT_HOST_OVERHEADS`."""
        generate_step, hook_call, entry, forward_call, _ = DEFAULT_HOST_OVERHEADS
        if raw is None:
            return generate_step, hook_call, entry, forward_call
        defaults = {
            "generate_step": generate_step,
            "hook_call": hook_call,
            "safetensors_entry": entry,
            "forward_call": forward_call,
        }
        where = "host_overheads"
        if not isinstance(raw, dict):
            self.fail(
                where, f"expected an object with generate_step, hook_call and source, got {_json_type(raw)}"
            )
        self.fields(raw, where, _HOST_OVERHEAD_FIELDS, required=("generate_step", "hook_call", "source"))
        self.source(raw["source"], f"{where}.source")
        if "comment" in raw:
            self.text(raw["comment"], f"{where}.comment", empty_ok=True)
        values = []
        for field, default in defaults.items():
            if field not in raw:  # safetensors_entry or forward_call, optional
                values.append(default)
                continue
            value = self.number(raw[field], f"{where}.{field}", unit="seconds")
            if value < 0:
                self.fail(f"{where}.{field}", f"must not be negative (got {_show(raw[field])})")
            values.append(value)
        return values[0], values[1], values[2], values[3]

    def page_cache(self, raw: object, devices: list[Device]) -> Link:
        where = "page_cache_read"
        if not isinstance(raw, dict):
            self.fail(where, f"expected an object with alpha, beta and source, got {_json_type(raw)}")
        self.fields(raw, where, _SHORTHAND_FIELDS, required=("alpha", "beta", "source"))
        alpha, beta = self.alpha_beta(raw, where)
        if "disk" not in {device.key for device in devices}:
            self.fail(where, "no device 'disk' (add a device with kind 'disk', or drop page_cache_read)")
        return Link(src="disk", dst="cpu", alpha_s=alpha, beta_bytes_per_s=beta)

    def check_device_set(self, devices: list[Device]) -> None:
        if sum(device.kind == "cpu" for device in devices) != 1:
            self.fail("devices", "exactly one device must have kind 'cpu' (the host every machine has)")
        gpus = sorted(int(device.key) for device in devices if device.kind == "cuda")
        if gpus != list(range(len(gpus))):
            self.fail("devices", f"GPU keys must be 0, 1, ... without gaps, as CUDA numbers them ({gpus})")

    # ---- devices ---------------------------------------------------------------------------

    def device(self, raw: object, where: str) -> Device:
        if not isinstance(raw, dict):
            self.fail(where, f"expected an object, got {_json_type(raw)}")
        self.fields(raw, where, _DEVICE_FIELDS, required=("key", "kind", "name", "memory", "source"))
        kind = self.text(raw["kind"], f"{where}.kind")
        if kind not in _KINDS:
            self.fail(f"{where}.kind", f"unknown kind {kind!r} (use {', '.join(_KINDS)})")
        key = self.text(raw["key"], f"{where}.key")
        self.check_key(key, kind, f"{where}.key")
        name = self.text(raw["name"], f"{where}.name")
        self.source(raw["source"], f"{where}.source")
        if "comment" in raw:
            self.text(raw["comment"], f"{where}.comment", empty_ok=True)

        memory = self.size(raw["memory"], f"{where}.memory")
        if memory == 0:
            self.fail(f"{where}.memory", "must be positive (got 0)")
        if memory > _MOST_MEMORY[kind]:
            self.fail(
                f"{where}.memory",
                f"{format_bytes(memory)} is more than any {kind} device holds (at most "
                f"{format_bytes(_MOST_MEMORY[kind])} here): a unit written wrong?",
            )
        self.unitless(raw["memory"], memory, f"{where}.memory", text_only=False)
        free = memory
        if "free_memory" in raw:
            free = self.size(raw["free_memory"], f"{where}.free_memory")
            # a measured spec writes what was free as an int, which may truly be small
            self.unitless(raw["free_memory"], free, f"{where}.free_memory", text_only=True)
        if free > memory:
            self.fail(f"{where}.free_memory", f"more than memory ({free} > {memory} bytes)")
        overhead = 0
        if "runtime_overhead" in raw:
            overhead = self.size(raw["runtime_overhead"], f"{where}.runtime_overhead")
        if overhead >= memory:
            self.fail(f"{where}.runtime_overhead", f"must be less than memory ({overhead} >= {memory} bytes)")

        if kind in _ACCELERATORS:
            for field in ("peak_flops", "memory_bandwidth"):
                if field not in raw:
                    self.fail(f"{where}.{field}", f"missing (a {kind} device needs it to estimate its speed)")
        flops = self.flops(raw["peak_flops"], f"{where}.peak_flops") if "peak_flops" in raw else {}
        if kind in _ACCELERATORS and not flops:
            self.fail(f"{where}.peak_flops", f"give FLOP/s for at least one of {', '.join(FLOPS_DTYPES)}")
        bandwidth = 0.0
        if "memory_bandwidth" in raw:
            bandwidth = self.rate(raw["memory_bandwidth"], f"{where}.memory_bandwidth")
        kernel_s = 0.0
        if kind == "cuda":
            kernel_s = default_kernel_s(name)[0]
        elif kind == "cpu" and (flops or bandwidth):
            kernel_s = CPU_KERNEL_S[0]
        if "kernel_overhead" in raw:
            kernel_s = self.number(raw["kernel_overhead"], f"{where}.kernel_overhead", unit="seconds")
            if kernel_s < 0:
                self.fail(
                    f"{where}.kernel_overhead", f"must not be negative (got {_show(raw['kernel_overhead'])})"
                )
        return Device(
            key=key,
            kind=kind,
            name=name,
            total_memory=memory,
            free_memory=free,
            peak_flops=flops,
            memory_bandwidth=bandwidth,
            runtime_overhead=overhead,
            kernel_s=kernel_s,
        )

    def check_key(self, key: str, kind: str, where: str) -> None:
        if kind == "cuda":
            if not is_gpu(key) or str(int(key)) != key:
                self.fail(where, f"a cuda device's key is its index (0, 1, ...), got {key!r}")
        elif key != kind:
            self.fail(where, f"a {kind} device's key is {kind!r}, got {key!r}")

    def flops(self, raw: object, where: str) -> dict[str, float]:
        if not isinstance(raw, dict):
            self.fail(where, f"expected an object of dtype -> FLOP/s, got {_json_type(raw)}")
        flops: dict[str, float] = {}
        for dtype, value in raw.items():
            if dtype not in FLOPS_DTYPES:
                self.fail(where, f"unknown dtype {dtype!r} (use {', '.join(FLOPS_DTYPES)})")
            flops[dtype] = self.positive(value, f"{where}.{dtype}", unit="FLOP/s")
        return flops

    # ---- links -----------------------------------------------------------------------------

    def links(self, raw: object, devices: list[Device], *, where: str = "links") -> list[Link]:
        if not isinstance(raw, list):
            self.fail(where, f"expected a list of links, got {_json_type(raw)}")
        keys = {device.key for device in devices}
        links: list[Link] = []
        seen: dict[tuple[str, str], int] = {}
        field = where
        for index, entry in enumerate(raw):
            where = f"{field}[{index}]"
            if not isinstance(entry, dict):
                self.fail(where, f"expected an object, got {_json_type(entry)}")
            self.fields(entry, where, _LINK_FIELDS, required=("src", "dst", "alpha", "beta", "source"))
            ends = []
            for end in ("src", "dst"):
                key = self.text(entry[end], f"{where}.{end}")
                if key not in keys:
                    self.fail(f"{where}.{end}", f"no device {key!r} (have {', '.join(sorted(keys))})")
                ends.append(key)
            src, dst = ends
            if src == dst:
                self.fail(where, f"a link joins two devices, not {src!r} to itself")
            if (src, dst) in seen:
                self.fail(where, f"link {src} -> {dst} is listed twice (also {field}[{seen[(src, dst)]}])")
            seen[(src, dst)] = index
            alpha, beta = self.alpha_beta(entry, where)
            links.append(Link(src=src, dst=dst, alpha_s=alpha, beta_bytes_per_s=beta))
        return links

    def topology(self, raw: object, devices: list[Device], listed: set[tuple[str, str]]) -> list[Link]:
        """Links the shorthands add: each pair that `listed` does not already have.

        Linear in the links it adds (every ordered pair of GPUs for ``gpu_to_gpu``: a million for
        a 1000-GPU spec), each pair generated once and checked against the few listed links."""
        if not isinstance(raw, dict):
            self.fail("topology", f"expected an object, got {_json_type(raw)}")
        self.fields(raw, "topology", _TOPOLOGY_FIELDS, required=())
        keys = {device.key for device in devices}
        added: list[Link] = []
        for field in _LINK_ORDER:  # host_to_gpu_pageable: `pageable` reads it
            if field not in raw:
                continue
            where = f"topology.{field}"
            entry = raw[field]
            if not isinstance(entry, dict):
                self.fail(where, f"expected an object with alpha, beta and source, got {_json_type(entry)}")
            self.fields(entry, where, _SHORTHAND_FIELDS, required=("alpha", "beta", "source"))
            alpha, beta = self.alpha_beta(entry, where)
            if field == "disk_read" and "disk" not in keys:
                self.fail(where, "no device 'disk' (add a device with kind 'disk', or drop disk_read)")
            added += [
                Link(src=src, dst=dst, alpha_s=alpha, beta_bytes_per_s=beta)
                for src, dst in _shorthand_pairs(field, devices)
                if (src, dst) not in listed
            ]
        return added

    def alpha_beta(self, entry: dict[str, Any], where: str) -> tuple[float, float]:
        alpha = self.number(entry["alpha"], f"{where}.alpha", unit="seconds")
        if alpha < 0:
            self.fail(f"{where}.alpha", f"must not be negative (got {_show(entry['alpha'])})")
        beta = self.rate(entry["beta"], f"{where}.beta")
        self.source(entry["source"], f"{where}.source")
        if "comment" in entry:
            self.text(entry["comment"], f"{where}.comment", empty_ok=True)
        return alpha, beta

    def check_complete(self, devices: list[Device], listed: list[Link], shorthands: Collection[str]) -> None:
        """Every link the cost model may price exists: a pair a shorthand covers does (it added
        what `listed` lacks), any other must be listed."""
        have = {(link.src, link.dst) for link in listed}
        for field in _LINK_ORDER:
            if field in shorthands:
                continue
            for src, dst in _shorthand_pairs(field, devices):
                if (src, dst) not in have:
                    remedy = f"list it under links or give topology.{field}"
                    self.fail("links", f"no link {src} -> {dst} ({remedy})")

    # ---- values ----------------------------------------------------------------------------

    def fields(
        self, raw: dict[str, Any], where: str, known: tuple[str, ...], *, required: tuple[str, ...]
    ) -> None:
        for field in raw:
            if field not in known:
                self.fail(f"{_join(where, str(field))}", f"unknown field (known: {', '.join(known)})")
        for field in required:
            if field not in raw:
                self.fail(_join(where, field), "missing" + _MEANINGS.get(field, ""))

    def text(self, raw: object, where: str, *, empty_ok: bool = False) -> str:
        if not isinstance(raw, str):
            self.fail(where, f"expected a string, got {_json_type(raw)}")
        if not empty_ok and not raw.strip():
            self.fail(where, "must not be empty")
        return raw

    def source(self, raw: object, where: str) -> None:
        """Where the figures come from: a non-empty string, or a non-empty list of them."""
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            self.fail(where, "must not be empty: cite where the figures come from")
        for index, item in enumerate(items):
            at = f"{where}[{index}]" if isinstance(raw, list) else where
            if not isinstance(item, str):
                self.fail(at, f"expected a string citing where the figures come from, got {_json_type(item)}")
            if not item.strip():
                self.fail(at, "must not be empty: cite where the figures come from")

    def number(self, raw: object, where: str, *, unit: str) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            self.fail(where, f"expected a number of {unit}, got {_show(raw)}")
        value = float(raw)
        if not math.isfinite(value):
            self.fail(where, f"must be finite (got {_show(raw)})")
        return value

    def positive(self, raw: object, where: str, *, unit: str) -> float:
        value = self.number(raw, where, unit=unit)
        if value <= 0:
            self.fail(where, f"must be positive (got {_show(raw)})")
        return value

    def rate(self, raw: object, where: str) -> float:
        """Bytes per second: a number, or a size followed by ``/s`` (``"25GB/s"``)."""
        if isinstance(raw, str):
            text = raw.strip()
            if not text.endswith("/s"):
                self.fail(where, f"expected bytes per second, a number or like '25GB/s', got {_show(raw)}")
            value = float(self.parsed(text[:-2], where))
            if value <= 0:
                self.fail(where, f"must be positive (got {_show(raw)})")
            return value
        return self.positive(raw, where, unit="bytes per second")

    def unitless(self, raw: object, size: int, where: str, *, text_only: bool) -> None:
        """Refuse a size under `_LEAST_BARE_MEMORY` written without its unit: ``"memory": 12`` or
        ``"24"`` meant GiB, and read as bytes the device holds nothing, which no error would say."""
        bare = (isinstance(raw, str) and raw.strip().isdigit()) or (
            not text_only and isinstance(raw, (int, float)) and not isinstance(raw, bool)
        )
        if bare and size < _LEAST_BARE_MEMORY:
            self.fail(where, f"{size} bytes: a bare number is bytes; write a size such as '{size}GiB'")

    def size(self, raw: object, where: str) -> int:
        """Bytes: an integer, an integral number (``8e10``), or a size such as ``"80GiB"``."""
        if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, int) and not isinstance(raw, bool) and raw < 0:
            self.fail(where, f"must not be negative (got {raw})")
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            self.fail(where, f"expected bytes, an integer or a size like '80GiB', got {_show(raw)}")
        return self.parsed(raw, where)

    def parsed(self, raw: str | int, where: str) -> int:
        """`parse_bytes`, its ValueError turned into this file's one-line error."""
        try:
            return parse_bytes(raw)
        except ValueError as error:
            message = str(error)
        self.fail(where, message)


#: What a required field means, where its name alone does not say what to write.
_MEANINGS = {
    "source": " (where its figures come from, for whoever reads the plan: a datasheet, a benchmark, a"
    " measurement)",
}

#: The least device memory a spec may give as a bare number of bytes: below it, a size without
#: its unit ("memory": 24 for 24 GiB).
_LEAST_BARE_MEMORY = 1 << 20

#: The most memory a spec may give a device of each kind: well above the largest sold (a GPU's
#: 288 GB, a server's 32 TiB of RAM), far below what a unit written wrong gives ("24TB" for a
#: GPU, a number of GiB with a dozen digits too many).
_MOST_MEMORY = {"cuda": 4 << 40, "mps": 4 << 40, "cpu": 256 << 40, "disk": 1 << 60}


def _shorthand_pairs(field: str, devices: list[Device]) -> Iterator[tuple[str, str]]:
    """The (src, dst) pairs a topology shorthand supplies, which are the links the cost model may
    price: both directions between the cpu and each accelerator (``host_to_gpu``), every ordered
    pair of accelerators (``gpu_to_gpu``), and disk -> cpu when there is a disk (``disk_read``)."""
    accelerators = [device.key for device in devices if device.kind in _ACCELERATORS]
    if field == "host_to_gpu":
        for key in accelerators:
            yield "cpu", key
            yield key, "cpu"
    elif field == "gpu_to_gpu":
        for src in accelerators:
            for dst in accelerators:
                if src != dst:
                    yield src, dst
    elif field == "disk_read" and any(device.kind == "disk" for device in devices):
        yield "disk", "cpu"


def _join(where: str, field: str) -> str:
    return field if where == "top level" else f"{where}.{field}"


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def _show(value: object) -> str:
    """A value as the author wrote it in JSON: -5, not -5.0; strings quoted."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return json.dumps(value) if isinstance(value, (str, bool)) or value is None else str(value)
