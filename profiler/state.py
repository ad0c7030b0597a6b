"""Generation state: what a model keeps between forwards (KV caches, state-space and hybrid caches).

transformers keeps it in `Cache` objects made of layers (``DynamicLayer``, ``LinearAttentionLayer``
for Mamba's convolution and recurrent states, a model's own subclasses such as DeepSeek-V4's
compressor layers), which hold tensors in attributes, lists and dicts. Everything here walks that
structure generically: an object is part of the state when its class or one of its bases comes
from ``transformers.cache_utils``, so a model-defined cache class is found like the library's.

- `StateSnapshot` records it before a unit runs and restores it before each timed repeat, so that
  repeats start from the same state instead of growing it (a grown cache changes the shapes of
  the next call until they no longer match).
- `state_tensors` lists the tensors it holds, to count its bytes.
- `state_slots` names every place that holds a tensor, with what it holds, to tell which unit
  wrote which part.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from transformers import cache_utils

__all__ = ["StateSnapshot", "is_state", "state_slots", "state_tensors"]

# A slot: (container, key): a state object (key: attribute name), or a list or dict inside one.
Slot = tuple[Any, Any]


def is_state(obj: object) -> bool:
    """Whether `obj` is part of a generation state: a `Cache`, a cache layer, or an object of a
    class derived from one (a model's own cache classes)."""
    return any(cls.__module__ == cache_utils.__name__ for cls in type(obj).__mro__[:-1]) and hasattr(
        obj, "__dict__"
    )


def _leaves(value: Any) -> Iterator[Any]:
    """The values inside nested lists, tuples and dicts."""
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    else:
        yield value


def _copied(value: Any) -> Any:
    """`value` with every list, tuple and dict inside it copied; other values shared."""
    if isinstance(value, list):
        return [_copied(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_copied(item) for item in value)
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    return value


def _objects(roots: list[Any]) -> list[Any]:
    """Every state object reachable from `roots` (or inside lists, tuples and dicts of them),
    each once."""
    found: list[Any] = []
    seen: set[int] = set()
    pending = [leaf for root in roots for leaf in _leaves(root)]
    while pending:
        obj = pending.pop()
        if id(obj) in seen or not is_state(obj):
            continue
        seen.add(id(obj))
        found.append(obj)
        pending.extend(leaf for value in vars(obj).values() for leaf in _leaves(value))
    return found


class StateSnapshot:
    """The generation state reachable from `roots` as it is now, to be restored later.

    A cache update replaces tensors (``torch.cat``), appends to lists, sets dict entries and
    flips flags; restoring each state object's attributes, with copies of the containers they
    held, undoes all of it without copying tensor data. An update in place (a static cache's
    ``index_copy_``) changes values only, never shapes, so repeats still match.
    """

    def __init__(self, roots: list[Any]) -> None:
        self._states = [(obj, {key: _copied(v) for key, v in vars(obj).items()}) for obj in _objects(roots)]

    def restore(self) -> None:
        for obj, state in self._states:
            current = vars(obj)
            current.clear()
            current.update({key: _copied(v) for key, v in state.items()})

    def tensors(self) -> list[torch.Tensor]:
        """The tensors the state holds now."""
        return state_tensors([obj for obj, _ in self._states])


def state_tensors(roots: list[Any]) -> list[torch.Tensor]:
    """Every tensor held by the state reachable from `roots`."""
    return [
        leaf
        for obj in _objects(roots)
        for value in vars(obj).values()
        for leaf in _leaves(value)
        if isinstance(leaf, torch.Tensor)
    ]


def state_slots(roots: list[Any]) -> dict[tuple[int, Any], tuple[Slot, Any]]:
    """Every place inside the state that holds a tensor (or None, not yet filled), with a
    fingerprint of what it holds: the tensor's identity and version counter, since a layer that
    grows by ``torch.cat`` holds a new tensor and one updated in place a new version."""
    slots: dict[tuple[int, Any], tuple[Slot, Any]] = {}

    def mark(container: Any, key: Any, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            slots[(id(container), key)] = ((container, key), (id(value), value._version))
        elif value is None:
            slots[(id(container), key)] = ((container, key), None)
        elif isinstance(value, (list, dict)):
            for inner_key, item in enumerate(value) if isinstance(value, list) else value.items():
                mark(value, inner_key, item)

    for obj in _objects(roots):
        for key, value in vars(obj).items():
            mark(obj, key, value)
    return slots


def slot_tensor(slot: Slot) -> torch.Tensor | None:
    """The tensor a slot holds now, if any."""
    container, key = slot
    if isinstance(container, list):
        value = container[key] if key < len(container) else None
    elif isinstance(container, dict):
        value = container.get(key)
    else:
        value = vars(container).get(key)
    return value if isinstance(value, torch.Tensor) else None
