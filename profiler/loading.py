"""Load a model for real with a device map: ``from_pretrained`` on a checkpoint on this machine.

`load_with_map` is what ``tuner.from_pretrained`` calls: the user's model, placed as a tuned map
says. `profiler.validate` loads maps through the same pieces (the checkpoint, the class, the
``from_pretrained`` call) but keeps their exceptions, since a map that cannot load is one of its
results rather than an error.

Nothing here reaches the network: a model is a local folder or a hub id already in the local
cache (`profiler.source.resolve_source`), and ``from_pretrained`` is told to stay local.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any

import transformers

from profiler.inputs import TORCH_DTYPES
from profiler.model import pretrained_class
from profiler.source import ModelSource
from profiler.source import load_config
from profiler.source import resolve_source
from tuner.core.devices import device_label
from tuner.core.devices import device_order
from tuner.core.devices import is_gpu
from tuner.core.devices import to_key
from tuner.core.exceptions import ModelSourceError
from tuner.core.exceptions import ProfilingError
from tuner.core.exceptions import WorkloadError
from tuner.core.logs import quieted

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

__all__ = ["absent_devices", "load_with_map"]

#: Arguments `load_with_map` gives ``from_pretrained`` itself, under its own names.
_OWN_ARGUMENTS = frozenset({"device_map", "dtype", "torch_dtype"})


def load_with_map(
    model: str,
    device_map: Mapping[str, int | str],
    *,
    dtype: str,
    trust_remote_code: bool = False,
    offload_folder: str | os.PathLike[str] | None = None,
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """Load `model` with ``from_pretrained``, each unit where `device_map` places it.

    The class is the one the config's ``architectures`` name, else the first auto class
    (causal LM, seq2seq LM, bare model) that knows the config. ``disk`` units of a safetensors
    checkpoint are read from the checkpoint itself; a ``.bin`` checkpoint, or weights transformers
    converts on load (most MoE models' experts), have them written to `offload_folder`, or, when
    none is given, to a temporary folder that is removed once the returned model is
    garbage-collected.

    Args:
        model: a model folder with weights, or a hub id in the local Hugging Face cache.
        device_map: where each unit lives, as ``from_pretrained`` takes it (``{"model.embed_tokens":
            0, "model.layers.0": "cpu", "lm_head": "disk"}``); a tuned map's ``to_hf()``.
        dtype: ``float32``, ``float16`` or ``bfloat16`` (a run's ``workload.dtype``: the dtype it
            was planned in).
        trust_remote_code: run the model's own code, for models transformers does not ship.
        offload_folder: where ``disk`` weights that are not read from the checkpoint itself are
            written; kept.
        **from_pretrained_kwargs: passed on to ``from_pretrained`` (``attn_implementation``, ...).

    Returns:
        The loaded model, in eval mode, with accelerate's hooks for offloaded units.

    Raises:
        ModelSourceError: no such model, or a folder without weights.
        WorkloadError: an unknown `dtype`.
        ProfilingError: the model could not be loaded (a map that does not cover it, a device
            that does not exist, out of memory): one line naming the model and the cause.
        TypeError: `from_pretrained_kwargs` repeats what this function sets (``device_map``,
            ``dtype``).

    Example:
        >>> placed = {"model": "cpu", "lm_head": "disk"}
        >>> model = load_with_map("./tiny-llama", placed, dtype="float32")  # doctest: +SKIP
        >>> model.hf_device_map  # doctest: +SKIP
        {'model': 'cpu', 'lm_head': 'disk'}
    """
    clash = sorted(_OWN_ARGUMENTS & from_pretrained_kwargs.keys())
    if clash:
        raise TypeError(f"load_with_map() sets {', '.join(clash)} itself; pass device_map and dtype instead")
    if dtype not in TORCH_DTYPES:
        raise WorkloadError(f"unknown dtype {dtype!r}; choose one of {', '.join(TORCH_DTYPES)}")
    absent = absent_devices(device_map.values())
    if absent:
        raise ProfilingError(
            f"cannot load {model} with this device map: it places units on {absent}, which this "
            "machine lacks; a map planned for other hardware loads there"
        )
    source = open_checkpoint(model)
    model_class = pretrained_class(
        load_config(source, trust_remote_code=trust_remote_code), trust_remote_code=trust_remote_code
    )
    mapping = dict(device_map)
    scratch: str | None = None
    # "disk" spelled exactly so, as transformers looks for it. A safetensors checkpoint whose
    # weights transformers converts on load (the per-expert tensors of most MoE models, stacked
    # into one per block) has them re-saved there too, so every map with disk units gets a folder.
    if offload_folder is None and "disk" in mapping.values():
        scratch = offload_folder = tempfile.mkdtemp(prefix="tuner-offload-")
    try:
        loaded = load_pretrained(
            model_class,
            source,
            mapping,
            dtype=TORCH_DTYPES[dtype],
            offload_folder=offload_folder,
            trust_remote_code=trust_remote_code,
            **{"local_files_only": True, **from_pretrained_kwargs},
        )
    except BaseException as exc:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if not isinstance(exc, Exception):
            raise  # Ctrl-C stays an interrupt
        yours = [name for name in from_pretrained_kwargs if f"'{name}'" in str(exc)]
        if isinstance(exc, TypeError) and yours:  # a keyword of the caller's, not the map, is at fault
            raise ProfilingError(
                f"cannot load {model}: {error_line(exc)} (given to from_pretrained as {yours[0]}=...)"
            ) from exc
        raise ProfilingError(f"cannot load {model} with this device map: {error_line(exc)}") from exc
    if scratch is not None and not os.listdir(scratch):
        os.rmdir(scratch)  # every disk unit is read from the checkpoint itself
    elif scratch is not None:
        # accelerate reads offloaded weights from the folder on every forward, so the folder lives
        # exactly as long as the model does.
        weakref.finalize(loaded, shutil.rmtree, scratch, ignore_errors=True)
    return loaded


def absent_devices(places: Iterable[int | str]) -> str:
    """The devices among `places` (a device map's values) that this machine lacks, named as
    tables name them (``GPU 0, GPU 1``), or an empty string: a map planned for a spec's GPUs
    cannot load on a machine without them, and torch says so only as it loads ("Cannot access
    accelerator device when none is available")."""
    import torch

    keys = set()
    for place in places:
        try:
            keys.add(to_key(place))
        except ValueError:
            continue  # not a device: from_pretrained names it
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    absent = [
        key
        for key in keys
        if (is_gpu(key) and int(key) >= gpus) or (key == "mps" and not torch.backends.mps.is_available())
    ]
    return ", ".join(device_label(key) for key in sorted(absent, key=device_order))


def open_checkpoint(model: str) -> ModelSource:
    """The model's folder, refused when it holds no weights (only its config).

    Raises:
        ModelSourceError: no such model, or a folder with ``config.json`` only.
    """
    source = resolve_source(model)
    if source.weights == "config-only":
        raise ModelSourceError(
            f"{model} holds no weights (config.json only); loading the model for real needs them: "
            "save weights there first (save_pretrained) or give the folder that has them"
        )
    return source


def load_pretrained(
    model_class: Any,
    source: ModelSource,
    device_map: dict[str, int | str],
    *,
    dtype: torch.dtype,
    offload_folder: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """``model_class.from_pretrained`` on the checkpoint folder with `device_map`; its exceptions
    are left as they come, for the caller to judge."""
    return model_class.from_pretrained(
        source.path,
        device_map=device_map,
        dtype=dtype,
        offload_folder=os.fspath(offload_folder) if offload_folder is not None else None,
        trust_remote_code=trust_remote_code,
        **from_pretrained_kwargs,
    )


def error_line(exc: BaseException) -> str:
    """The exception in one line: its type and the first line of its message."""
    message = str(exc).strip()
    first = message.splitlines()[0] if message else ""
    return type(exc).__name__ + (f": {first}" if first else "")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' and accelerate's per-load chatter (progress bars, offload notes), and
    bitsandbytes' per-call one (an 8-bit model on the cpu logs a line per matrix product)."""
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        with quieted("accelerate", "bitsandbytes"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()
