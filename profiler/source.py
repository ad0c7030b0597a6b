"""Where a model comes from: a local folder (with or without weights) or a hub id in the local cache.

Profiling never needs weight values (latency and memory do not depend on them), so a folder with
only ``config.json`` is a complete source. Weights, when present, only add their identity to the
model's fingerprint.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.core.domain import stable_hash
from tuner.core.exceptions import ModelSourceError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = ["ModelSource", "load_config", "looks_like_path", "resolve_source"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

# Config keys that change with the library version or the path, not with the model.
_VOLATILE_CONFIG_KEYS = {
    "transformers_version",
    "_name_or_path",
    "dtype",
    "torch_dtype",
    "_attn_implementation",
}


@dataclass(frozen=True)
class ModelSource:
    """A model folder on this machine.

    Args:
        name: what the user named (a path or a hub id).
        path: the folder holding ``config.json``.
        weights: ``safetensors``, ``pytorch`` or ``config-only``.
        weight_files: the checkpoint files, if any.
    """

    name: str
    path: Path
    weights: str
    weight_files: tuple[Path, ...] = ()

    def request_identity(self) -> dict[str, object]:
        """What identifies the model as the files say it, read without transformers: the config's
        fields (less those that change with the library or the path) and the weights' identity.

        Cheap and torch-free, so that a stored run can be found before any model code loads.
        `resolve_source` refused a config that is not JSON; one changed since reads as None.
        """
        try:
            config = json.loads((self.path / "config.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            config = None
        if isinstance(config, dict):
            config = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
        return {"config": config, "weights": self.weights_identity()}

    def weights_identity(self) -> list[list[object]]:
        """Names, sizes and (for safetensors) header digests of the checkpoint files.

        The safetensors header lists every tensor's name, dtype, shape and offsets, so its digest
        identifies the checkpoint without reading gigabytes of weights.
        """
        identity: list[list[object]] = []
        for file in self.weight_files:
            entry: list[object] = [file.name, file.stat().st_size]
            if file.suffix == ".safetensors":
                entry.append(stable_hash(safetensors_header(file).decode("utf-8", "replace")))
            identity.append(entry)
        return identity


def safetensors_header(file: Path) -> bytes:
    """The JSON header of a safetensors file, after checking that the file holds what it lists.

    A safetensors file is an 8-byte little-endian header length, a JSON header naming each
    tensor's byte range (``data_offsets``) in the data that follows, and that data. A file cut
    short (an interrupted download or copy) lists ranges past its end; one that is no safetensors
    file at all (random bytes) states a header longer than itself.

    Raises:
        ModelSourceError: naming the file and what is wrong with it.
    """
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            start = handle.read(8)
            (header_len,) = struct.unpack("<Q", start) if len(start) == 8 else (None,)
            if header_len is None or header_len > size - 8:
                raise ModelSourceError(
                    f"{file} is not a safetensors file: it does not start with the length of a header "
                    f"it holds ({size} bytes); save or download the checkpoint again"
                )
            header = handle.read(header_len)
    except OSError as exc:
        raise ModelSourceError(f"cannot read {file}: {exc.strerror or exc}") from exc
    try:
        tensors = json.loads(header.decode("utf-8"))
        if not isinstance(tensors, dict):
            raise ValueError("not a JSON object")
        ends = [int(entry["data_offsets"][1]) for name, entry in tensors.items() if name != "__metadata__"]
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise ModelSourceError(
            f"{file} is not a safetensors file: its header is no list of tensors ({exc}); "
            "save or download the checkpoint again"
        ) from None
    data = size - 8 - header_len
    if max(ends, default=0) > data:
        raise ModelSourceError(
            f"{file} is truncated: its tensors need {max(ends)} bytes after the header and it holds "
            f"{data}; save or download the checkpoint again"
        )
    return header


def _check_pytorch_checkpoint(file: Path) -> None:
    """Check that a ``.bin`` checkpoint in ``torch.save``'s zip format is not cut short.

    Since torch 1.6 ``torch.save`` writes a zip archive, whose directory is at its end: a file cut
    short (an interrupted download or copy) has none. One with bytes cut out of its middle (a
    damaged copy) keeps its directory, but finds it where the directory does not say it lies:
    Python's zipfile then shifts every member by the difference, as for data put before an
    archive, and torch.save's first member, at byte 0, is so found elsewhere. Reading the
    directory costs a few reads whatever the checkpoint's size; checking every tensor's bytes
    would read them all. The older pickled format is not an archive and is let through:
    ``from_pretrained`` says what is wrong with it.

    Raises:
        ModelSourceError: naming the file and what is wrong with it.
    """
    try:
        with file.open("rb") as handle:
            if handle.read(4) != b"PK\x03\x04":  # not a zip archive: the pickled format
                return
        with zipfile.ZipFile(file) as archive:
            first = min((member.header_offset for member in archive.infolist()), default=0)
        if first != 0:
            shift = f"its first member lies {abs(first)} bytes from where its directory says"
            raise zipfile.BadZipFile(shift)
    except zipfile.BadZipFile as exc:
        raise ModelSourceError(
            f"{file} is truncated or damaged: it is no whole archive as torch.save writes it ({exc}); "
            "save or download the checkpoint again"
        ) from None
    except OSError as exc:
        raise ModelSourceError(f"cannot read {file}: {exc.strerror or exc}") from exc


def resolve_source(name: str) -> ModelSource:
    """Find the folder of a model named by path or hub id, without touching the network.

    Raises:
        ModelSourceError: the path does not exist, holds no ``config.json`` or one that is not
            JSON, holds a damaged checkpoint, or the hub id is not in the local Hugging Face cache.
    """
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError(f"{name} is a file; give the model's folder (the one with config.json)")
        return _source_from_folder(name, path)
    if looks_like_path(name) or not _HUB_ID.match(name):
        raise ModelSourceError(f"no such model folder: {name}")
    return _source_from_hub_cache(name)


def load_config(source: ModelSource, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """Read the model's config with transformers, turning its failures into one-line errors."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except StrictDataclassError as exc:  # a config class's own checks (heads that do not divide)
        reason = _first_line(exc.__cause__) if exc.__cause__ is not None else _first_line(exc)
        raise ModelSourceError(f"{source.name} has an invalid config: {reason}") from exc
    except ValueError as exc:
        first_line = _first_line(exc)
        if "trust_remote_code" in str(exc):
            first_line = (
                "the model needs its own code; allow it with trust_remote_code (--trust-remote-code) "
                "if you trust it"
            )
        raise ModelSourceError(f"cannot read the config of {source.name}: {first_line}") from exc
    except (OSError, KeyError, TypeError) as exc:
        raise ModelSourceError(f"cannot read the config of {source.name}: {exc}") from exc


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def config_fingerprint(config: PretrainedConfig) -> dict[str, object]:
    """The config as a dict without the keys that change with the library version or the path."""
    return {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}


def looks_like_path(name: str) -> bool:
    """Whether `name` is shaped like a path to a folder rather than a hub id (``org/name``):
    ``./m``, ``/models/m``, ``~/m``, ``models/org/m``."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _source_from_folder(name: str, path: Path) -> ModelSource:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelSourceError(f"{name} has no config.json; a model folder needs at least its config")
    try:  # refused here, in a fraction of a second, not by transformers seconds later
        json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"{config_file} is not valid JSON: {exc}") from exc
    safetensors = tuple(sorted(path.glob("*.safetensors")))
    if safetensors:
        for file in safetensors:
            safetensors_header(file)  # a damaged checkpoint is refused before anything uses it
        return ModelSource(name, path, "safetensors", safetensors)
    pytorch = tuple(sorted(path.glob("pytorch_model*.bin")))
    if pytorch:
        for file in pytorch:
            _check_pytorch_checkpoint(file)  # refused before anything uses it
        return ModelSource(name, path, "pytorch", pytorch)
    return ModelSource(name, path, "config-only")


def _source_from_hub_cache(name: str) -> ModelSource:
    from huggingface_hub import constants
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(name, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError) as exc:
        parent = Path(name).parent
        if parent.is_dir():  # `models/llama` meant a folder here: a download is no answer
            raise ModelSourceError(
                f"no such model folder: {name} ({parent}/ is a folder here, without {Path(name).name}; "
                "nor is it a hub id in the Hugging Face cache)"
            ) from exc
        raise ModelSourceError(
            f"{name} is not a local folder and not in the Hugging Face cache ({constants.HF_HUB_CACHE}); "
            f"where there is network, fetch it with `hf download {name} config.json` "
            "(the config alone is enough to profile) or pass a local folder"
        ) from exc
    return _source_from_folder(name, Path(folder))
