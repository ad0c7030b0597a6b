"""Candidate maps that need no search: accelerate's own strategies and single-device maps.

The strategy maps come from transformers' own planner, the very function ``from_pretrained``
runs for ``device_map="auto"`` and friends, applied to our meta-device copy of the model. Any
difference between their price and ours is then a difference of plans, not of re-implementations.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tuner.core.devices import to_hf
from tuner.core.domain import FITTED_AUTO
from tuner.core.domain import STRATEGIES
from tuner.core.domain import Candidate
from tuner.core.domain import DeviceMap
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Prediction
from tuner.core.logs import quieted
from tuner.core.sizes import format_bytes
from tuner.core.sizes import round_bytes

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["accelerate_maps", "fitted_auto", "single_device_maps", "memory_limits"]


def memory_limits(hardware: HardwareProfile, max_memory: Mapping[str, int] | None) -> dict[str, int]:
    """Bytes each device may hold: the user's limit where given, else what is free."""
    given = dict(max_memory or {})
    return {device.key: given.get(device.key, device.free_memory) for device in hardware.devices}


def accelerate_maps(
    model: PreTrainedModel,
    unit_names: tuple[str, ...],
    hardware: HardwareProfile,
    max_memory: Mapping[str, int] | None = None,
    on_left_out: Callable[[str, str], None] | None = None,
) -> list[Candidate]:
    """accelerate's map for each strategy, under the same limits our search gets.

    `model` may live on the meta device: the planner reads sizes, never values. Every GPU and
    the cpu get an explicit limit, so planning for a spec's GPUs works on a machine without them.
    A quantized model (``model.hf_quantizer``) is planned with its quantizer, as
    ``from_pretrained`` plans it: quantized sizes, less the quantizer's memory reserve.
    A strategy transformers cannot plan, or whose map ``from_pretrained`` could not load, is no
    candidate: `on_left_out` is told its name and why, in one line.
    """
    limits = memory_limits(hardware, max_memory)
    candidates = []
    for strategy in STRATEGIES:
        try:
            dmap = _plan(model, strategy, limits, unit_names)
        except _Unplanned as exc:
            if on_left_out is not None:
                on_left_out(strategy, str(exc))
            continue
        candidates.append(Candidate(strategy, dmap))
    return candidates


def fitted_auto(
    model: PreTrainedModel,
    unit_names: tuple[str, ...],
    hardware: HardwareProfile,
    max_memory: Mapping[str, int] | None,
    predict: Callable[[DeviceMap], Prediction],
) -> Candidate | None:
    """accelerate's ``auto`` planned under limits lowered until its map fits `max_memory`: what a
    user has to ask ``from_pretrained(device_map="auto", max_memory=...)`` for to stay within the
    limits, since its plan leaves out the KV cache, the working set and the runtime.

    Each device's limit that the map overruns (`predict` prices it against `max_memory`) is
    lowered to the weights the map holds there less the overrun, rounded down to a figure
    ``--max-memory`` writes, and the model planned again. The candidate is named by the limits
    it was planned for: ``auto at cpu=12.4MiB``. None when ``auto`` fits as asked, or when no
    lowered limits make it fit (the planner fails, disk overruns, a limit reaches nothing, or
    `_FIT_ATTEMPTS` run out).
    """
    asked = memory_limits(hardware, max_memory)
    limits = dict(asked)
    for _ in range(_FIT_ATTEMPTS):
        try:
            dmap = _plan(model, "auto", limits, unit_names)
            prediction = predict(dmap)
        except (_Unplanned, ValueError):
            return None
        if prediction.feasible:
            if limits == asked:
                return None
            lowered = ",".join(
                f"{key}={format_bytes(limit).replace(' ', '')}"
                for key, limit in limits.items()
                if limit != asked[key]
            )
            return Candidate(f"{FITTED_AUTO}{lowered}", dmap)
        for memory in prediction.shortfalls:
            # below the weights the map holds there: accelerate's limit counts weights alone, so
            # a limit lowered from far above them (the KV cache filling the rest) plans the same map
            limit = round_bytes(min(limits[memory.device], memory.weights) - memory.over_by)
            if memory.device == "disk" or limit <= 0:
                return None
            limits[memory.device] = limit
    return None


#: How many times `fitted_auto` plans again with lower limits: each lowers them by what the last
#: map overran, so one or two plans usually fit.
_FIT_ATTEMPTS = 8


class _Unplanned(Exception):
    """transformers' planner cannot plan a strategy, or its map is one from_pretrained could not
    load; the message says why, in one line."""


def _plan(
    model: PreTrainedModel, strategy: str, limits: Mapping[str, int], unit_names: tuple[str, ...]
) -> DeviceMap:
    """The map ``from_pretrained(device_map=strategy, max_memory=limits)`` loads.

    Raises:
        _Unplanned: transformers cannot plan it, or its map could not be loaded.
    """
    # transformers' planner, loaded only here: the rest of tuner.plan stays free of torch.
    from transformers.integrations.accelerate import _get_device_map

    quantizer = getattr(model, "hf_quantizer", None)
    planning = _SizingOnly(quantizer) if quantizer is not None else None
    accelerate_limits: dict[int | str, int] = {
        to_hf(key): limit for key, limit in limits.items() if key != "disk"
    }
    # The planners warn of what our own pricing reports: a GPU index "not available" (a spec's
    # GPUs), offloaded buffers that "seem not to fit any GPU's remaining memory".
    with quieted(*_PLANNER_LOGGERS):
        try:
            planned = _get_device_map(model, strategy, accelerate_limits, planning)  # type: ignore[arg-type]
        except (IndexError, KeyError, ValueError, ZeroDivisionError) as exc:
            # The planner itself fails, as from_pretrained with this strategy would (a tied
            # masked-LM head under a cap that offloads it: IndexError).
            raise _Unplanned(f"transformers' planner failed ({_one_line(exc)})") from None
    try:
        return DeviceMap.from_hf(_as_loaded(model, dict(planned), unit_names), unit_names)
    except ValueError as exc:  # a map from_pretrained could not load either
        raise _Unplanned(f"its map could not be loaded ({_one_line(exc)})") from None


#: Where accelerate's and transformers' planners log (transformers' copy is the one in use).
_PLANNER_LOGGERS = ("accelerate.utils.modeling", "transformers.integrations.accelerate")


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split()) or "no message"
    return f"{type(error).__name__}: {text[:200]}"


def _as_loaded(
    model: PreTrainedModel, planned: dict[str, int | str], unit_names: tuple[str, ...]
) -> dict[str, int | str]:
    """accelerate's map with every unit it leaves out placed where ``from_pretrained`` puts it.

    The planner sizes what the checkpoint holds, so a buffer that is not saved (OpenAI-GPT's
    ``transformer.position_ids``, GPTBigCode's ``transformer.bias``) may be named nowhere in its
    map; ``from_pretrained`` then makes it at transformers' ``get_device`` for its name: the
    placement of the map's longest matching key, else of ``""``, else the cpu, and never disk,
    where a tensor that is not in the checkpoint cannot be read from.
    """
    from transformers.integrations.accelerate import get_device

    def covered(unit: str) -> bool:  # by the unit, a module around it, or its parts
        return any(
            key == "" or unit == key or unit.startswith(f"{key}.") or key.startswith(f"{unit}.")
            for key in planned
        )

    params = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    placed = dict(planned)
    for unit in unit_names:
        if not covered(unit):
            holds_weights = any(name == unit or name.startswith(f"{unit}.") for name in params)
            placed[unit] = get_device(planned, unit, valid_torch_device=not holds_weights)  # type: ignore[assignment]
    return placed


class _SizingOnly:
    """A quantizer as transformers' planner uses it (its element sizes, its memory reserve), less
    the check ``from_pretrained`` runs on the planned map: a map the quantizer refuses (cpu or disk
    units of a bitsandbytes model) is a strategy's answer all the same, judged by the cost model."""

    def __init__(self, quantizer: object) -> None:
        self._quantizer = quantizer

    def __getattr__(self, name: str) -> object:
        return getattr(self._quantizer, name)

    def validate_environment(self, *args: object, **kwargs: object) -> None:
        return None


def single_device_maps(unit_names: tuple[str, ...], hardware: HardwareProfile) -> list[Candidate]:
    """The whole model on one compute device: what ``device_map="cuda:0"`` or ``"cpu"`` does."""
    return [
        Candidate(f"single:{device.key}", DeviceMap(tuple((name, device.key) for name in unit_names)))
        for device in hardware.compute_devices
    ]
