"""Peak bytes of the tensors a piece of code allocates, on any device, from the op stream itself.

On CUDA the caching allocator already keeps a peak (``max_memory_allocated``); on the CPU there
is no such counter, so a dispatch mode watches every op's outputs and keeps a weak reference to
each new storage. Storages that existed before (weights, inputs, the KV cache) never count.

Meta tensors have storages with a size and no data, so the same tracker gives the memory of a
workload on the meta device: exact byte counts at any size, with no computation at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from profiler.state import state_tensors

__all__ = ["FusedKernelsOnMeta", "HeldBytes", "LiveBytesTracker", "storage_bytes"]


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one storage count once).

    Storages are told apart by their identity, not their address: meta storages have none.
    """
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[StorageWeakRef(storage).cdata] = storage.nbytes()
    return sum(seen.values())


class LiveBytesTracker(TorchDispatchMode):
    """Tracks the live bytes of storages created inside the ``with`` block and their peak.

    The peak is sampled after every op, so it is the largest working set between ops; scratch
    space an op frees before it returns is not seen. Between ops the tracker's count may still
    hold storages freed since it last looked for them (an upper bound of the live bytes), and it
    looks only when the count could be a new peak: each look visits every live storage, and a look
    after every op took a quarter of a long trace (a state-space model's scan over its prompt,
    one op per token per layer). `current` looks first, so it is exact.

    Args:
        existing: tensors whose storages were there before and must not count (weights, inputs).
    """

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self._ignored = {StorageWeakRef(t.untyped_storage()).cdata for t in existing}
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self._kept: list[StorageWeakRef] = []
        self._counted = 0  # bytes of the storages in `_live`, some of which may be freed by now
        self.peak = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(result):
            if isinstance(leaf, torch.Tensor):
                self._remember(leaf.untyped_storage())
        if self._counted > self.peak:
            self.peak = max(self.peak, self.current)
        return result

    @property
    def current(self) -> int:
        """Bytes of the storages made inside the block that are live now."""
        self._forget_freed()
        return self._counted

    def live(self) -> list[tuple[StorageWeakRef, int]]:
        """The storages made inside the block that are live now, with their bytes. The references
        are weak; while one is kept, its storage's identity is not reused by another."""
        self._forget_freed()
        return list(self._live.values())

    def restart(self) -> None:
        """Count from zero: the storages live now count no more, as if they had existed before."""
        self._forget_freed()
        self._ignored.update(self._live)
        self._kept.extend(ref for ref, _ in self._live.values())  # their identities stay theirs
        self._live.clear()
        self._counted = self.peak = 0

    def _remember(self, storage: torch.UntypedStorage) -> None:
        ref = StorageWeakRef(storage)
        if ref.cdata in self._ignored or ref.cdata in self._live:
            return
        nbytes = storage.nbytes()
        self._live[ref.cdata] = (ref, nbytes)
        self._counted += nbytes

    def _forget_freed(self) -> None:
        for key, (ref, nbytes) in list(self._live.items()):
            if ref.expired():
                del self._live[key]
                self._counted -= nbytes


#: A live storage as the trackers keep it: a weak reference and its bytes.
_Live = tuple[StorageWeakRef, int]


class HeldBytes(LiveBytesTracker):
    """What a forward holds around each unit, in bytes of the storages it made: what the unit
    finds held when it starts (`held`: its inputs, the outputs of earlier units still referenced,
    as a speech model keeps its feature encoder's output while the transformer runs; the glue
    code's masks and position embeddings; the inputs of the phase), and the most that was live at
    once between the previous unit's return and this start (`glue`: the glue code's own
    temporaries, such as the scores of an attention split into leaf units; the moment a unit
    returns, with its input and its output both live, is the previous unit's to count). What is
    live at once after the phase's last unit returned, until `phase_ended`, counts in that
    unit's `glue`: the forward's output and what its caller made of it.

    Two kinds do not count: the generation state (the KV cache, counted on its own by whoever
    prices the map) and storages made in an earlier phase (`generate` drops the prefill's logits
    before its first step). A unit that starts several times keeps its largest figure. Whoever
    runs the forward calls `unit_starts` and `unit_ends` around each unit, and `phase_ended`
    with each phase's output. What each unit allocates above that while it runs is kept per
    phase too (`inside`).

    Args:
        existing: tensors that were there before and never count (the model's weights).
    """

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__(existing)
        self.held: dict[str, int] = {}
        self.glue: dict[str, int] = {}
        #: Per unit start: the storages live at the glue code's peak before it, and at its start.
        self._starts: list[tuple[str, list[_Live], list[_Live]]] = []
        #: Per phase ended, in order: each unit's peak above what it found held (its activation
        #: peak, as `profiler.layers` measures it), the most over its calls.
        self.inside: list[dict[str, int]] = []
        self._inside_now: dict[str, int] = {}
        self._in_unit = False
        self._unit_base = 0
        self._glue_peak: list[_Live] = []
        self._glue_peak_bytes = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        result = super().__torch_dispatch__(func, types, args, kwargs)
        if (
            not self._in_unit
            and self._counted > self._glue_peak_bytes
            and self.current > self._glue_peak_bytes
        ):
            # Which of these storages are state is known only once the phase returns it.
            self._glue_peak, self._glue_peak_bytes = list(self._live.values()), self._counted
        return result

    def unit_starts(self, name: str) -> None:
        self._starts.append((name, self._glue_peak, self.live()))
        self._in_unit = True
        self._unit_base = self.peak = self.current

    def unit_ends(self, name: str) -> None:
        self._in_unit = False
        self._inside_now[name] = max(self._inside_now.get(name, 0), self.peak - self._unit_base)
        self._glue_peak = self.live()
        self._glue_peak_bytes = self.current

    def phase_ended(self, output: Any) -> None:
        """The phase's forward returned `output`: what each unit found held, its state left out;
        the next phase counts from zero."""
        state = {StorageWeakRef(tensor.untyped_storage()).cdata for tensor in state_tensors([output])}

        def held(live: list[_Live]) -> int:
            return sum(nbytes for ref, nbytes in live if ref.expired() or ref.cdata not in state)

        if self._starts and not self._in_unit:
            # after the last unit returned, as the glue before it: the output, what the caller
            # made of it (generate's copies of the last logits)
            self._starts.append((self._starts[-1][0], self._glue_peak, []))

        for name, glue_peak, start in self._starts:
            self.held[name] = max(self.held.get(name, 0), held(start))
            self.glue[name] = max(self.glue.get(name, 0), held(glue_peak), held(start))
        self._starts.clear()
        self.inside.append(self._inside_now)
        self._inside_now = {}
        self.restart()
        self._glue_peak, self._glue_peak_bytes = [], 0


class FusedKernelsOnMeta(TorchFunctionMode):
    """On meta tensors, size fused kernels as they allocate on a real device: their output.

    - Scaled-dot-product attention: flash and memory-efficient attention (and PyTorch's fused
      CPU kernel) never hold the score matrix; the math path sdpa takes on meta would, inflating
      activation peaks by batch x heads x seq x seq elements.
    - Grouped matrix products of mixture-of-experts layers (``torch._grouped_mm``, which
      ``F.grouped_mm`` calls): tokens (m x k) against stacked expert weights (experts x k x n)
      give m x n, in any dtype, where the meta kernel refuses all but bfloat16.
    """

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query = args[0] if args else kwargs["query"]
            value = args[2] if len(args) > 2 else kwargs["value"]
            if query.device.type == "meta" and query.dim() == 4:
                # batch x heads x length x dim, laid out as the fused kernels write it: heads
                # inside length, so that the usual transpose back to batch x length x hidden
                # is a view, not a copy. They also return the softmax's log-sum-exp per row
                # (float32), which sdpa drops.
                batch, heads, length, _ = query.shape
                output = query.new_empty((batch, length, heads, value.shape[-1])).transpose(1, 2)
                query.new_empty((batch, heads, length), dtype=torch.float32)
                return output
            if query.device.type == "meta":
                return query.new_empty((*query.shape[:-1], value.shape[-1]))
        if func is torch._grouped_mm:
            tokens = args[0] if args else kwargs["mat_a"]
            experts = args[1] if len(args) > 1 else kwargs["mat_b"]
            if tokens.device.type == "meta" and tokens.dim() == 2 and experts.dim() == 3:
                dtype = kwargs.get("out_dtype") or tokens.dtype
                return tokens.new_empty((tokens.shape[0], experts.shape[-1]), dtype=dtype)
        return func(*args, **kwargs)
