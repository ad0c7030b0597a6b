"""Meta tensors that know their values: token ids, masks and positions, so model code may read them.

A meta tensor has a shape and no data, so model code that reads a value (``bool(mask.all())``,
``n.item()``) fails on it: ``Tensor.item() cannot be called on meta tensors``. The values such code
reads are almost always those of the inputs and what is computed from them alone: an all-ones
attention mask a decoder builds itself (BART, BioGPT), the count of image placeholders among the
token ids (LLaVA), positions. `KnownValues` runs every op that makes such a small tensor a second
time on the cpu, on the values of its inputs, and keeps the result beside the meta tensor; a read
of a meta tensor is then answered from it. Weights and activations have no known values, so
nothing large is ever computed: a read that depends on them still fails, as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten
from torch.utils._pytree import tree_leaves
from torch.utils._pytree import tree_map
from torch.utils.weak import WeakTensorKeyDictionary

__all__ = ["MAX_KNOWN_ELEMENTS", "KnownValues"]

#: Results with more elements than this get no known value: what model code reads is small (ids,
#: masks, counts); a batch x seq x seq mask of a long prompt would cost more than it tells.
MAX_KNOWN_ELEMENTS = 1 << 24

#: The same for a factory's floating-point result (no known inputs): a preallocated cache
#: (``StaticCache``) is made of zeros too, and is never read. Token ids and masks, integers or
#: booleans that a large batch of long prompts makes (2048 x 1024 tokens), keep the larger limit:
#: masking code reads them (``mask.sum() == mask.numel()``).
MAX_FACTORY_ELEMENTS = 1 << 20

_META = torch.device("meta")
_CPU = torch.device("cpu")

#: Tensor methods that read values into Python.
_READS = frozenset(
    {
        torch.Tensor.__bool__,
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.__int__,
        torch.Tensor.__float__,
        torch.Tensor.__index__,
        torch.Tensor.__complex__,
    }
)


class KnownValues(TorchFunctionMode):
    """A torch mode under which meta tensors made from known values know theirs.

    Known are: tensors made by factory functions on the meta device (``torch.ones(...,
    device="meta")``, ``torch.arange``), meta copies of cpu tensors (``ids.to("meta")``), and the
    results of ops whose meta inputs are all known. In-place ops update the known value alike.
    The second computation runs with every other torch mode off, so that trackers of memory or
    FLOPs never see it.

    Example:
        >>> with KnownValues():
        ...     mask = torch.ones(2, 8, device="meta")
        ...     bool((mask.sum() == mask.numel()).item())
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self._values = WeakTensorKeyDictionary()

    def value(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The cpu tensor holding `tensor`'s values, when known."""
        return self._values.get(tensor)

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in _READS and args and _is_meta(args[0]) and args[0] in self._values:
            with _quiet_modes():
                return func(self._values[args[0]], *args[1:], **kwargs)
        result = func(*args, **kwargs)
        self._follow(func, args, kwargs, result)
        return result

    def _follow(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        leaves = tree_leaves((args, kwargs))
        metas = [leaf for leaf in leaves if _is_meta(leaf)]
        produced = [leaf for leaf in tree_leaves(result) if _is_meta(leaf)]
        mutated = [args[0]] if args and _is_meta(args[0]) and _mutates(func) else []
        if not produced and not mutated:
            return
        known = all(meta in self._values for meta in metas)
        if not metas and not any(_names_meta(leaf) for leaf in leaves):
            known = False  # a factory that did not ask for meta (a default device): not ours
        if known and all(t.numel() <= _limit(t, bool(metas)) for t in produced):
            shadow_args, shadow_kwargs = tree_map(self._shadow, (args, kwargs))
            try:
                with _quiet_modes():
                    shadow = func(*shadow_args, **shadow_kwargs)
                computed = True
            except Exception:  # the op needs something only the real device has: stay unknown
                computed = False
            if computed:
                flat, _ = tree_flatten(result)
                shadow_flat, _ = tree_flatten(shadow)
                if len(flat) == len(shadow_flat):
                    for real, value in zip(flat, shadow_flat, strict=True):
                        if _is_meta(real) and isinstance(value, torch.Tensor) and not _is_meta(value):
                            self._values[real] = value
                return
        for tensor in [*produced, *mutated]:
            self._values.pop(tensor, None)

    def _shadow(self, leaf: Any) -> Any:
        if _is_meta(leaf):
            return self._values[leaf]
        if _names_meta(leaf):
            return _CPU if isinstance(leaf, torch.device) else "cpu"
        return leaf


def _limit(tensor: torch.Tensor, from_inputs: bool) -> int:
    if from_inputs or not (tensor.is_floating_point() or tensor.is_complex()):
        return MAX_KNOWN_ELEMENTS
    return MAX_FACTORY_ELEMENTS


def _is_meta(leaf: Any) -> bool:
    return isinstance(leaf, torch.Tensor) and leaf.device.type == "meta"


def _names_meta(leaf: Any) -> bool:
    if isinstance(leaf, torch.device):
        return leaf.type == "meta"
    return isinstance(leaf, str) and leaf == "meta"


def _mutates(func: Any) -> bool:
    name = getattr(func, "__name__", "")
    return name == "__setitem__" or (name.endswith("_") and not name.endswith("__"))


@contextlib.contextmanager
def _quiet_modes() -> Iterator[None]:
    """Every torch function and dispatch mode off: the value computation is not the model's."""
    with torch._C.DisableTorchFunction(), _disable_current_modes():
        yield
