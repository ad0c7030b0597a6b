"""The ``disk`` device (the offload folder) and how fast accelerate streams weights from it.

``disk -> cpu`` is measured as accelerate streams a ``disk`` unit: reads of a safetensors file
through ``dispatch_model`` and an offload index, uncached (the file's pages dropped from the page
cache with `drop_from_page_cache`) for the ``disk -> cpu`` link, and from the page cache for the
profile's `page_cache` link. Each is an alpha-beta link (`profiler.hardware.links`) whose alpha is
paid per weight tensor.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from profiler.hardware._dispatch import dispatch_quietly
from profiler.hardware._dispatch import hooked_calls
from profiler.hardware._lazy import LazyModule
from profiler.hardware._tiny import tiny_llama
from tuner.core.domain import Device
from tuner.core.domain import Link
from tuner.core.exceptions import ProfilingError

if TYPE_CHECKING:
    import torch

    #: A model, the map that streams it (every layer but the first on ``disk``), and one forward.
    _Layout = tuple[torch.nn.Module, dict[str, str], Callable[[torch.nn.Module], object]]
else:
    torch = LazyModule("torch")

__all__ = ["disk_device", "drop_from_page_cache", "measure_disk_links", "safetensors_entry_seconds"]


def disk_device(folder: Path) -> Device:
    """The ``disk`` device: the folder (created if missing) and its file system's size and free space."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(folder)
    except OSError as error:
        raise ProfilingError(f"cannot use {folder} as the disk device: {error}") from error
    return Device(
        key="disk",
        kind="disk",
        name=str(folder.resolve()),
        total_memory=usage.total,
        free_memory=usage.free,
    )


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages so the next read comes from the device.

    The file was fsynced, so its pages are clean and DONTNEED really drops them. Where
    posix_fadvise does not exist (macOS, Windows) reads come from the page cache and the link
    measures memory speed; there is no unprivileged portable alternative.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass  # some file systems (FUSE, tmpfs) refuse the hint; the figure is then an upper bound
    finally:
        os.close(fd)


#: The two models `measure_disk_links` streams. A tiny Llama of `_LLAMA_LAYERS` layers (hidden
#: 64: 9 weights of 0.5-32 KiB a layer) gives the cost per tensor as a model's layer pays it: each
#: read between its modules' hooks and kernels, which costs a fifth more here than reading the
#: same weights from a stack of bare linear layers (likely the caches a layer's work evicts). A stack
#: of `_LARGE_STACK` (layers, side) float32 square weights of 4 MiB, the size of a hidden-1024
#: projection, gives the cost per byte. Mapping cached pages costs less per byte for larger
#: tensors (about 12 GB/s at 4 MiB, 20 at 32 MiB, 36 at 128 MiB on a 2-core EPYC), so models
#: with larger weights stream somewhat faster than this link says.
_LLAMA_LAYERS = 16
_LARGE_STACK = (17, 1024)
#: Tokens of the tiny Llama's forward: its work stays next to nothing beside the reads.
_LLAMA_PROMPT = 8
#: Forwards of each stack per figure at least: one lasts a few milliseconds, so a scheduler tick
#: or a neighbour's burst weighs on it, and the best of several is what runs agree on (with 7,
#: repeated runs on a quiet machine spread 13% in alpha, a difference of two bests).
_MIN_READ_SAMPLES = 12

#: Entries the padded file of `safetensors_entry_seconds` lists beyond its model's own, and the
#: layers of its tiny Llama (all but the first streamed): enough parsing to stand well above a
#: forward's noise, in a tenth of a second a forward.
_PADDING_ENTRIES = 2048
_ENTRY_LAYERS = 4
#: Names of padding entries as a transformers checkpoint names a decoder layer's tensors: the
#: header's parse costs per byte of each entry as well as per entry, and a real entry (a dotted
#: name, a 2-D shape, offsets in the millions) has about twice the bytes of one named ``t.0``
#: and costs 1.45 against 1.25 us here, read in a loop.
_LAYER_TENSORS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
)


def safetensors_entry_seconds(folder: Path, repeats: int) -> float:
    """Seconds that opening a safetensors file costs per tensor its header lists.

    accelerate's weights loader opens the checkpoint file anew for every tensor of a ``disk``
    unit it reads (``safe_open`` then ``get_tensor``), and ``safe_open`` parses the whole header:
    a checkpoint of thousands of small tensors costs milliseconds per weight read. The figure is
    taken where a model pays it, between its layers' work: a tiny Llama streaming its layers from
    its own checkpoint, and from the same weights in a file whose header lists
    `_PADDING_ENTRIES` more tensors, named as a checkpoint's are; the difference of the two
    forwards' bests over the reads and the extra entries (both files in the page cache: the
    parse is the host's work). Read in a loop instead, one file after another, the parse costs
    a fifth to a third less here, likely because the loop keeps in cache what a layer's work
    evicts; in a model of 200 layers it costs half as much again as in the loop, which this
    4-layer figure does not reach (`benchmarks.streaming_split`).
    """
    padding = {
        f"padding.model.layers.{layer}.{_LAYER_TENSORS[tensor]}": torch.zeros(2, 2)
        for layer, tensor in (divmod(i, len(_LAYER_TENSORS)) for i in range(_PADDING_ENTRIES))
    }
    try:
        with tempfile.TemporaryDirectory(prefix="tuner-header-", dir=folder) as scratch:
            layout = functools.partial(_tiny_llama_layout, _ENTRY_LAYERS)
            models = {
                "own": _streamed_from(Path(scratch) / "own.safetensors", layout),
                "padded": _streamed_from(Path(scratch) / "padded.safetensors", layout, padding),
            }
            with torch.no_grad():
                for model in models.values():
                    model.run(model.streamed)  # warm up: hooks, allocator, the file's pages
                samples: dict[str, list[float]] = {name: [] for name in models}
                for _ in range(max(repeats, _MIN_READ_SAMPLES)):  # interleaved: a slow spell touches both
                    for name, model in models.items():
                        begin = time.perf_counter()
                        model.run(model.streamed)
                        samples[name].append(time.perf_counter() - begin)
            best = {name: min(seconds) for name, seconds in samples.items()}
            reads = models["own"].tensors
    except OSError as error:
        raise ProfilingError(f"cannot measure reads from {folder}: {error}") from error
    return max(0.0, (best["padded"] - best["own"]) / (reads * _PADDING_ENTRIES))


def measure_disk_links(
    folder: Path,
    largest: int,
    repeats: int,
    memory_bandwidth: float,
    step: Callable[[str], None],
    hook_call_s: float = 0.0,
    entry_s: float = 0.0,
) -> tuple[Link, Link]:
    """``disk -> cpu`` as accelerate streams a ``disk`` unit, from the device and from the page
    cache: (device link, page cache link), each ``alpha`` per weight tensor + bytes / ``beta``.

    Two models (a tiny Llama and a stack of large linear layers, `_LLAMA_LAYERS`, `_LARGE_STACK`)
    are saved as safetensors checkpoints and dispatched with accelerate's ``dispatch_model`` and an
    offload index into the file, which is how ``from_pretrained`` offloads a safetensors
    checkpoint: before each module runs, its hook reads its weights (``safe_open`` +
    ``get_tensor``, a memory map of the file), then puts them back on meta. A sample is one
    forward of a model with all its layers but the first on ``disk``; the best such forward less
    the best forward with the weights resident leaves the streaming, compute cancelling. For the
    device link the file's pages are dropped from the cache before each forward; for the page
    cache link they were read once before. The Llama gives the cost per tensor, the stack of 4 MiB
    weights (`largest` bytes at most in all) the cost per byte. The resident weights are a memory
    map of a copy of the file, as ``from_pretrained`` keeps them, so that only the streaming
    differs. The streamed model's hooked calls (counted; the resident model has none) are taken
    out at `hook_call_s` each, and the parse of the file's header on every read at `entry_s` per
    tensor it lists: the cost model prices both on their own.
    """
    step(f"link disk -> cpu ({folder})")
    large_count, large_side = _LARGE_STACK
    # the streamed layers (all but the first) hold at most `largest` bytes in all
    large_side = max(128, min(large_side, math.isqrt(largest // (large_count - 1) // 4)))
    models: dict[str, Callable[[], _Layout]] = {
        "small": lambda: _tiny_llama_layout(_LLAMA_LAYERS),
        "large": lambda: _linear_layout(large_side, large_count),
    }
    extra: dict[tuple[str, bool], float] = {}
    shape: dict[str, tuple[int, int]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="tuner-disk-", dir=folder) as scratch:
            for name, build in models.items():
                # Random values, so a compressing file system (btrfs, ZFS) cannot shrink the reads.
                stack = _streamed_from(Path(scratch) / f"{name}.safetensors", build)
                shape[name] = (stack.tensors, stack.nbytes)
                with torch.no_grad():
                    stack.run(stack.resident)
                    # Cold first: the warm samples then map pages the cache got by reading the
                    # file, as a checkpoint on disk comes in; pages left by writing the file
                    # (larger folios) map several times faster and would flatter the link.
                    for cold in (True, False):
                        stack.run(stack.streamed)  # warm up: hooks, allocator, the file's pages when warm
                        offloaded, kept = [], []
                        for _ in range(max(repeats, _MIN_READ_SAMPLES)):
                            if cold:
                                drop_from_page_cache(stack.path)
                            begin = time.perf_counter()
                            stack.run(stack.streamed)
                            offloaded.append(time.perf_counter() - begin)
                            begin = time.perf_counter()
                            stack.run(stack.resident)
                            kept.append(time.perf_counter() - begin)
                        # the best of each, not the best difference: a disturbed resident forward
                        # would make one difference look fast
                        # the streamed model's hooked calls and header parses, priced on their own
                        fixed = stack.hooks * hook_call_s + stack.tensors * stack.entries * entry_s
                        extra[name, cold] = max(0.0, min(offloaded) - min(kept) - fixed)
                del stack
    except OSError as error:
        raise ProfilingError(f"cannot measure reads from {folder}: {error}") from error
    return (
        _solve_read(shape, {name: extra[name, True] for name in models}, memory_bandwidth),
        _solve_read(shape, {name: extra[name, False] for name in models}, memory_bandwidth),
    )


@dataclass(frozen=True)
class _Streamed:
    """One model twice: weights resident, and all layers but the first streamed from `path`."""

    path: Path
    resident: torch.nn.Module
    streamed: torch.nn.Module
    run: Callable[[torch.nn.Module], object]
    tensors: int  # weights read from disk per forward
    nbytes: int  # their bytes
    hooks: int  # hooked calls per streamed forward
    entries: int  # tensors the file's header lists


def _tiny_llama_layout(depth: int) -> _Layout:
    model = tiny_llama(torch.device("cpu"), depth)
    layers = [f"model.layers.{i}" for i in range(depth)]
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        **{layer: "cpu" if i == 0 else "disk" for i, layer in enumerate(layers)},
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    ids = torch.randint(0, 256, (1, _LLAMA_PROMPT))
    return model, device_map, lambda m: m(ids, use_cache=False)


def _linear_layout(side: int, count: int) -> _Layout:
    model = torch.nn.Sequential(*(torch.nn.Linear(side, side, bias=False) for _ in range(count))).eval()
    device_map = {str(i): "cpu" if i == 0 else "disk" for i in range(count)}
    x = torch.randn(1, side)
    return model, device_map, lambda m: m(x)


def _streamed_from(
    path: Path, layout: Callable[[], _Layout], padding: dict[str, torch.Tensor] | None = None
) -> _Streamed:
    """Save the weights of `layout`'s model to `path` (fsynced: on the device, its cached pages
    clean), with `padding` tensors that no module holds, keep them resident in one copy of the
    model and stream them in another, as from_pretrained would with the layout's map."""
    from safetensors.torch import load_file
    from safetensors.torch import save_file

    resident, device_map, run = layout()
    weights = {key: tensor.contiguous() for key, tensor in resident.state_dict().items()}
    save_file({**weights, **(padding or {})}, str(path), metadata={"format": "pt"})
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    # from_pretrained keeps resident cpu weights as a memory map of the checkpoint too; of a
    # copy, since pages a process maps cannot be dropped from the cache
    copy = path.with_suffix(".resident.safetensors")
    shutil.copyfile(path, copy)
    mapped = {key: value for key, value in load_file(str(copy)).items() if key in weights}
    resident.load_state_dict(mapped, assign=True)
    on_disk = [key for key in weights if _on_disk(key, device_map)]
    streamed = layout()[0]
    streamed.load_state_dict(mapped, assign=True)  # the same mapped pages; neither model writes them
    index = {key: {"safetensors_file": str(path), "weight_name": key, "dtype": "float32"} for key in on_disk}
    dispatch_quietly(streamed, device_map, main_device="cpu", offload_index=index)
    with torch.no_grad():
        hooks = hooked_calls(streamed, lambda: run(streamed))
    return _Streamed(
        path=path,
        resident=resident,
        streamed=streamed,
        run=run,
        tensors=len(on_disk),
        nbytes=sum(weights[key].numel() * weights[key].element_size() for key in on_disk),
        hooks=hooks,
        entries=len(weights) + len(padding or {}),
    )


def _on_disk(key: str, device_map: dict[str, str]) -> bool:
    return any(key.startswith(f"{unit}.") for unit, place in device_map.items() if place == "disk")


def _solve_read(shape: dict[str, tuple[int, int]], extra: dict[str, float], memory_bandwidth: float) -> Link:
    """``alpha`` per tensor and ``beta`` from the extra seconds of the two stacks: two equations
    ``tensors * alpha + bytes / beta = extra``. Where noise makes the bytes look free or costlier
    than the small stack allows, bytes cost what copying memory costs and alpha takes the rest."""
    (t_small, b_small), (t_large, b_large) = shape["small"], shape["large"]
    determinant = t_small * b_large - t_large * b_small
    per_byte = (t_small * extra["large"] - t_large * extra["small"]) / determinant
    alpha = (extra["small"] - b_small * per_byte) / t_small
    if per_byte <= 0 or alpha < 0:
        per_byte = 1.0 / memory_bandwidth
        alpha = max(0.0, (extra["small"] - b_small * per_byte) / t_small)
    return Link(src="disk", dst="cpu", alpha_s=alpha, beta_bytes_per_s=1.0 / per_byte)
