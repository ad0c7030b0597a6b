"""FLOPs and bytes moved per unit and phase, counted on the meta model: the roofline's inputs.

The meta model runs the workload's forward passes (the prefill, then one decode step when the
workload generates) under ``torch.utils.flop_counter.FlopCounterMode``. No tensor holds data, so
a 70B-parameter model counts in about a second. Hooks on the placeable units attribute each
FLOP to the outermost unit running when it was issued, the same way ``profiler.model`` records
execution order.

What is counted, and what is not:

- ``FlopCounterMode`` counts only matrix products, convolutions and attention kernels (``mm``,
  ``addmm``, ``bmm``, ``baddbmm``, ``convolution``, the fused ``scaled_dot_product_*`` kernels).
  Element-wise work (norms, activations, softmax, rotary embeddings, residual adds) counts zero:
  a norm layer or the rotary embedding has 0 FLOPs here, and an embedding lookup too.
- A multiply-add is 2 FLOPs: ``x @ W`` with ``x`` of m x k and ``W`` of k x n is ``2 m k n``.
- Attention through ``F.scaled_dot_product_attention`` counts ``QK^T`` and ``AV`` as two batched
  products over the *query* heads (grouped-query KV heads are broadcast) and over the full
  ``s_q x s_k`` score matrix: ``2 * 2 * batch * heads * s_q * s_k * head_dim``. The causal mask
  is not taken into account (a causal prefill does about half of that). On meta tensors the
  fused kernel is decomposed into the math path (two ``bmm``), on CUDA it is one fused kernel with
  the same formula, so both give the same count.
- FLOPs issued by glue code between units (outside every placeable unit) are attributed to no unit.

Bytes moved is what one call of the unit must bring through device memory at least: its weights
(parameters and buffers, a tied weight included, read once per pass, at the bytes they are stored
in: a quantized checkpoint's quantized bytes), the tensors it receives and the tensors it returns
(a tensor returned unchanged is counted once), and the KV cache entries it owns as they stand
after the call: in prefill the ``seq`` tokens it writes, in a decode step the ``seq + 1`` tokens of
context it reads (the new token included). A call that grows its cache by copying it into a new
tensor also moves the copy: transformers' ``DynamicCache`` (what ``generate`` uses by default)
appends a token with ``torch.cat([keys, new], dim=-2)`` per layer and step, which reads the ``seq``
cached tokens and writes ``seq + 1``; a cache updated in place (a static cache's ``index_copy_``)
writes only the new token. A decode step of a layer with a cache so moves about three times its
cache: the copy's read and write, and attention's read.

Kernels are the aten operators a unit's calls dispatch that do work on a device: every operator
the meta pass dispatches except views and aliases (``view``, ``transpose``, ``expand``, ``slice``,
``_unsafe_view``, ``detach``...), which only make new tensor metadata, and bare allocations
(``empty``). A call of ``F.scaled_dot_product_attention`` is one kernel, as the fused kernel that
runs on a GPU (and on the cpu) is, though on meta tensors it decomposes into its math path.
Eager PyTorch pays a fixed cost per kernel (`tuner.core.domain.Device.kernel_s`) that a roofline
of FLOPs and bytes leaves out; at decode with small batches it dominates.

Mixture-of-experts layers run on transformers' ``batched_mm`` experts path
(`profiler.model.experts_on_meta`): its ``bmm`` products are counted, one per (token, chosen
expert) pair, so the FLOPs are those of the top-k experts that run, not of all experts. Their
weights count as the experts a call can touch: a call routing ``p`` (token, expert) pairs over
``E`` experts reads at most ``min(E, p)`` of them, so a decode step of one token with top-2 of 8
experts reads a quarter of the block's expert weights.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from profiler.inputs import check_workload
from profiler.model import MetaModel
from profiler.model import forward_phases
from profiler.model import no_split_classes
from profiler.model import placeable_units
from profiler.state import Slot
from profiler.state import is_state
from profiler.state import slot_tensor
from profiler.state import state_slots
from tuner.core.domain import Phase
from tuner.core.domain import Workload

__all__ = ["UnitWork", "count_work", "kernels_launched", "launches_kernel"]

_aten = torch.ops.aten
#: Operators that are not views by their schema yet only make metadata or allocate.
_NO_KERNEL = frozenset(
    {
        _aten._unsafe_view.default,
        _aten.alias.default,
        _aten.detach.default,
        _aten.lift_fresh.default,
        _aten.empty.memory_format,
        _aten.empty_strided.default,
        _aten.sym_size.int,
        _aten.sym_stride.int,
        _aten.sym_numel.default,
        _aten.sym_storage_offset.default,
        _aten.is_contiguous.default,
    }
)


def launches_kernel(op: torch._ops.OpOverload) -> bool:
    """Whether an aten operator does work on a device (a kernel), not just a view or metadata."""
    return not op.is_view and op not in _NO_KERNEL


def kernels_launched(run: Callable[[], object]) -> int:
    """How many kernels `run` launches, counted as the meta pass counts a unit's (on any device):
    what the measured cost per kernel is divided by, so that ``kernels x kernel_s`` prices it."""
    counter = _KernelCounter()
    with counter, _FusedAttention(counter):
        run()
    return counter.count


@dataclass(frozen=True)
class UnitWork:
    """The work of one unit in one forward pass of a phase: what a roofline estimate needs.

    Args:
        flops: floating-point operations counted by ``FlopCounterMode`` (matmul, convolution and
            attention only; a multiply-add is 2).
        bytes_moved: bytes the unit must move through device memory: weights once, inputs,
            outputs and the KV cache it writes (prefill) or reads (decode).
        kernels: kernels its calls launch in the pass (see the module's docstring).
    """

    flops: int
    bytes_moved: int
    kernels: int = 0

    def __post_init__(self) -> None:
        if self.flops < 0 or self.bytes_moved < 0 or self.kernels < 0:
            counts = f"flops {self.flops}, bytes {self.bytes_moved}, kernels {self.kernels}"
            raise ValueError(f"work must not be negative ({counts})")


def count_work(meta: MetaModel, workload: Workload) -> dict[tuple[str, Phase], UnitWork]:
    """Count the FLOPs and bytes moved of every unit that runs, per phase of `workload`.

    Phases are those of ``profiler.inputs``: the prefill (``batch x seq`` tokens) and, when
    ``workload.new_tokens > 0``, one decode step (``batch x 1`` token at context ``seq``). A unit
    called several times in one pass adds its calls up (its weights still count once).

    Args:
        meta: the model on the meta device (``profiler.model.build_meta_model``); it is run, not
            changed.
        workload: batch, prompt length and whether there is a decode phase.

    Returns:
        ``{(unit name, phase): UnitWork}`` for every placeable unit that ran in that phase.

    Raises:
        WorkloadError: the model cannot run the workload.
        ProfilingError: the forward pass failed on the meta device.

    Example:
        >>> meta = build_meta_model(resolve_source("path/to/llama"), "bfloat16")  # doctest: +SKIP
        >>> work = count_work(meta, Workload(batch=1, seq=32, dtype="bfloat16"))  # doctest: +SKIP
        >>> work["lm_head", Phase.PREFILL].flops == 2 * 32 * hidden * vocab  # doctest: +SKIP
        True
    """
    model = meta.runnable
    check_workload(model, workload, meta.source.path)
    entries = placeable_units(model, no_split_classes(model))
    sizes = meta.tensor_bytes()
    counter = _WorkCounter(entries, _stored_weight_bytes(meta, [name for name, _ in entries], sizes), sizes)
    forward_phases(meta, workload, counter, what="counting the work")
    return counter.results()


def _nbytes(tensor: torch.Tensor) -> int:
    # Meta tensors have no storage to measure; shape and dtype say what a real one would hold.
    return tensor.numel() * tensor.element_size()


def _stored_weight_bytes(meta: MetaModel, units: list[str], sizes: dict[str, int]) -> dict[str, int]:
    """Bytes of each unit's parameters and buffers as loaded (a tied weight included), from the
    model as ``from_pretrained`` builds it: `sizes` are its tensors' stored bytes by name."""
    result: dict[str, int] = {}
    for name in units:
        try:
            entry: Any = meta.model.get_submodule(name)
        except AttributeError:  # a bare parameter or buffer
            result[name] = sizes.get(name, 0)
            continue
        tensors = {id(t): tensor_name for tensor_name, t in entry.named_parameters(prefix=name)}
        tensors.update({id(t): tensor_name for tensor_name, t in entry.named_buffers(prefix=name)})
        result[name] = sum(sizes[tensor_name] for tensor_name in tensors.values())
    return result


def _expert_blocks(name: str, module: nn.Module, sizes: dict[str, int]) -> list[tuple[nn.Module, int]]:
    """The blocks of experts inside unit `name`, with the stored bytes of their stacked expert
    weights (one slice per expert)."""
    blocks = []
    for sub_name, sub in module.named_modules(prefix=name):
        count = getattr(sub, "num_experts", None)
        if isinstance(count, int) and count > 0 and hasattr(sub, "has_gate"):
            stacked = [
                sizes.get(param_name, _nbytes(param))
                for param_name, param in sub.named_parameters(prefix=sub_name, recurse=False)
                if param.dim() >= 2 and param.shape[0] == count
            ]
            blocks.append((sub, sum(stacked)))
    return blocks


@dataclass
class _Call:
    """What is known at the start of a unit's outermost call."""

    name: str
    flops_before: int
    kernels_before: int
    inputs: dict[int, torch.Tensor]
    caches: list[Any]
    slots_before: dict[tuple[int, Any], tuple[Slot, Any]]
    held_bytes: dict[tuple[int, Any], int]  # bytes of the tensor each slot held before the call


class _WorkCounter:
    """FlopCounterMode plus hooks on the placeable units that split its count between them."""

    def __init__(
        self,
        entries: list[tuple[str, nn.Module | torch.Tensor]],
        weights: dict[str, int],
        sizes: dict[str, int],
    ) -> None:
        self.phase = Phase.PREFILL
        self.mode = FlopCounterMode(display=False)
        self.kernels = _KernelCounter()
        self._attention = _FusedAttention(self.kernels)
        self._modules = [(name, entry) for name, entry in entries if isinstance(entry, nn.Module)]
        self._weights = weights
        # expert blocks: the unit holding each, its expert weights' bytes, and what calls of it read
        self._experts = [
            (name, *block) for name, module in self._modules for block in _expert_blocks(name, module, sizes)
        ]
        self._expert_reads: dict[tuple[str, Phase], float] = defaultdict(float)
        self._flops: dict[tuple[str, Phase], int] = defaultdict(int)
        self._kernels: dict[tuple[str, Phase], int] = defaultdict(int)
        self._io_bytes: dict[tuple[str, Phase], int] = defaultdict(int)
        self._cache_bytes: dict[tuple[str, Phase], int] = defaultdict(int)
        self._copy_bytes: dict[tuple[str, Phase], int] = defaultdict(int)
        self._owned: dict[str, dict[tuple[int, Any], Slot]] = defaultdict(dict)
        self._stack: list[_Call | None] = []
        self._handles: list[Any] = []

    def __enter__(self) -> _WorkCounter:
        for name, module in self._modules:
            self._handles.append(module.register_forward_pre_hook(self._enter(name), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._leave(name), always_call=True))
        for name, block, nbytes in self._experts:
            self._handles.append(
                block.register_forward_pre_hook(self._routed(name, block, nbytes), with_kwargs=True)
            )
        self.mode.__enter__()
        self.kernels.__enter__()
        self._attention.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._attention.__exit__(*exc)
            self.kernels.__exit__(*exc)
            self.mode.__exit__(*exc)
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()

    def results(self) -> dict[tuple[str, Phase], UnitWork]:
        return {
            key: UnitWork(
                flops=self._flops[key],
                bytes_moved=self._weight_reads(key)
                + self._io_bytes[key]
                + self._cache_bytes[key]
                + self._copy_bytes[key],
                kernels=self._kernels[key],
            )
            for key in self._io_bytes
        }

    def _weight_reads(self, key: tuple[str, Phase]) -> int:
        """The unit's weights, less the experts its calls in this phase could not have touched."""
        experts = sum(nbytes for name, _, nbytes in self._experts if name == key[0])
        touched = min(float(experts), self._expert_reads.get(key, float(experts)))
        return self._weights[key[0]] - experts + round(touched)

    def _routed(self, name: str, block: nn.Module, nbytes: int) -> Any:
        """Pre-hook of an expert block: the share of its experts that this call's routing reaches."""

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            routing = args[1] if len(args) > 1 else kwargs.get("top_k_index")
            count = int(getattr(block, "num_experts", 1))
            pairs = routing.numel() if isinstance(routing, torch.Tensor) else count
            self._expert_reads[(name, self.phase)] += nbytes * min(count, pairs) / count

        return hook

    def _enter(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._stack:  # inside another unit's call: that unit owns this work
                self._stack.append(None)
                return
            leaves = tree_leaves((args, kwargs))
            caches = [leaf for leaf in leaves if is_state(leaf)]
            slots = state_slots(caches)
            held = {ident: slot_tensor(slot) for ident, (slot, _) in slots.items()}
            self._stack.append(
                _Call(
                    name=name,
                    flops_before=self.mode.get_total_flops(),
                    kernels_before=self.kernels.count,
                    inputs={id(t): t for t in leaves if isinstance(t, torch.Tensor)},
                    caches=caches,
                    slots_before=slots,
                    held_bytes={ident: _nbytes(t) for ident, t in held.items() if t is not None},
                )
            )

        return hook

    def _leave(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            call = self._stack.pop()
            if call is None:
                return
            key = (call.name, self.phase)
            self._flops[key] += self.mode.get_total_flops() - call.flops_before
            self._kernels[key] += self.kernels.count - call.kernels_before
            outputs = {id(t): t for t in tree_leaves(output) if isinstance(t, torch.Tensor)}
            fresh = [t for ident, t in outputs.items() if ident not in call.inputs]
            self._io_bytes[key] += sum(_nbytes(t) for t in [*call.inputs.values(), *fresh])
            owned = self._owned[call.name]
            for ident, (slot, state) in state_slots(call.caches).items():
                before = call.slots_before.get(ident)
                if state is not None and (before is None or before[1] != state):
                    owned[ident] = slot
                if _copied(before, state) and ident in call.held_bytes:
                    # grown by copy (torch.cat): the old tensor read, the new one written
                    tensor = slot_tensor(slot)
                    self._copy_bytes[key] += call.held_bytes[ident] + (
                        _nbytes(tensor) if tensor is not None else 0
                    )
            self._cache_bytes[key] += sum(
                _nbytes(tensor) for tensor in map(slot_tensor, owned.values()) if tensor is not None
            )

        return hook


def _copied(before: tuple[Slot, Any] | None, state: Any) -> bool:
    """Whether a slot that held a tensor before a call holds a different tensor after it (a new
    tensor made from the old one, as ``torch.cat`` makes), rather than the same one updated in
    place (a new version of the same tensor) or nothing new."""
    return before is not None and before[1] is not None and state is not None and before[1][0] != state[0]


class _KernelCounter(TorchDispatchMode):
    """Counts the operators dispatched that launch a kernel (`launches_kernel`), except inside a
    fused attention call, which `_FusedAttention` counts as one."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.fused = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if not self.fused and launches_kernel(func):
            self.count += 1
        return func(*args, **(kwargs or {}))


class _FusedAttention(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` as the one fused kernel it runs as on a real device."""

    def __init__(self, counter: _KernelCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if func is not functional.scaled_dot_product_attention or self.counter.fused:
            return func(*args, **(kwargs or {}))
        self.counter.count += 1
        self.counter.fused += 1
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.counter.fused -= 1
