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
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["LiveBytesTracker", "storage_bytes"]


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
    space an op frees before it returns is not seen.

    Args:
        existing: tensors whose storages were there before and must not count (weights, inputs).
    """

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self._ignored = {StorageWeakRef(t.untyped_storage()).cdata for t in existing}
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        self._forget_freed()
        for leaf in tree_leaves(result):
            if isinstance(leaf, torch.Tensor):
                self._remember(leaf.untyped_storage())
        self.peak = max(self.peak, self.current)
        return result

    def _remember(self, storage: torch.UntypedStorage) -> None:
        ref = StorageWeakRef(storage)
        if ref.cdata in self._ignored or ref.cdata in self._live:
            return
        nbytes = storage.nbytes()
        self._live[ref.cdata] = (ref, nbytes)
        self.current += nbytes

    def _forget_freed(self) -> None:
        for key, (ref, nbytes) in list(self._live.items()):
            if ref.expired():
                del self._live[key]
                self.current -= nbytes
