"""load_with_map: a tiny real model loaded with a cpu and disk map gives the whole model's logits.

Every map here stays on cpu and disk, so the suite runs on a CPU-only machine.
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers import PreTrainedModel

from profiler.loading import absent_devices
from profiler.loading import load_with_map
from tests.conftest import TINY_CONFIGS
from tuner.core.exceptions import ModelSourceError
from tuner.core.exceptions import ProfilingError
from tuner.core.exceptions import WorkloadError

pytestmark = pytest.mark.usefixtures("one_thread")

#: Every unit of the tiny llama, half of its decoder layers and the final norm on disk.
CPU_AND_DISK = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "disk",
    "model.layers.1": "cpu",
    "model.layers.2": "disk",
    "model.norm": "disk",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def bin_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama as a ``pytorch_model.bin`` checkpoint; transformers 5 writes safetensors
    only (``safe_serialization=False`` is ignored), so the state dict is saved by hand."""
    folder = tmp_path_factory.mktemp("llama-bin")
    config = TINY_CONFIGS["llama"]()
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


@pytest.fixture
def scratch_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system's temporary folder, for this test only: where a temporary offload folder goes."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def logits(model: PreTrainedModel) -> torch.Tensor:
    ids = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_ids=ids).logits


def whole(folder: Path) -> PreTrainedModel:
    return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)


def test_a_cpu_and_disk_map_gives_the_whole_models_logits(
    weights_folder: Callable[[str], Path], scratch_root: Path
) -> None:
    folder = weights_folder("llama")

    model = load_with_map(str(folder), CPU_AND_DISK, dtype="float32")

    assert not model.training
    assert model.hf_device_map == CPU_AND_DISK
    torch.testing.assert_close(logits(model), logits(whole(folder)))
    # safetensors: disk units are read from the checkpoint itself, no folder is needed
    assert list(scratch_root.iterdir()) == []


def test_a_bin_checkpoint_offloads_to_a_temporary_folder_that_lives_as_long_as_the_model(
    bin_folder: Path, scratch_root: Path
) -> None:
    model = load_with_map(str(bin_folder), CPU_AND_DISK, dtype="float32")

    (offload,) = scratch_root.iterdir()
    assert offload.name.startswith("tuner-offload-")
    assert any(offload.iterdir())  # the disk units' weights
    torch.testing.assert_close(logits(model), logits(whole(bin_folder)))

    del model
    gc.collect()
    assert not offload.exists()


def test_a_given_offload_folder_is_used_and_kept(
    bin_folder: Path, tmp_path: Path, scratch_root: Path
) -> None:
    given = tmp_path / "offload"

    model = load_with_map(str(bin_folder), CPU_AND_DISK, dtype="float32", offload_folder=given)
    del model
    gc.collect()

    assert any(given.iterdir())
    assert list(scratch_root.iterdir()) == []


def test_a_map_that_cannot_load_is_a_one_line_profiling_error_and_leaves_no_folder(
    bin_folder: Path, scratch_root: Path
) -> None:
    incomplete = {name: place for name, place in CPU_AND_DISK.items() if name != "lm_head"}

    with pytest.raises(ProfilingError, match="cannot load") as caught:
        load_with_map(str(bin_folder), incomplete, dtype="float32")

    assert str(bin_folder) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert list(scratch_root.iterdir()) == []


def test_a_config_only_folder_is_refused(config_folder: Callable[[str], Path]) -> None:
    with pytest.raises(ModelSourceError, match="holds no weights") as caught:
        load_with_map(str(config_folder("llama")), CPU_AND_DISK, dtype="float32")
    assert "\n" not in str(caught.value)


def test_bad_arguments_raise(weights_folder: Callable[[str], Path], tmp_path: Path) -> None:
    folder = str(weights_folder("llama"))
    with pytest.raises(ModelSourceError):
        load_with_map(str(tmp_path / "missing"), CPU_AND_DISK, dtype="float32")
    with pytest.raises(WorkloadError, match="unknown dtype"):
        load_with_map(folder, CPU_AND_DISK, dtype="float64")
    with pytest.raises(TypeError, match="dtype"):
        load_with_map(folder, CPU_AND_DISK, dtype="float32", torch_dtype=torch.float16)
    with pytest.raises(ProfilingError) as caught:
        load_with_map(folder, CPU_AND_DISK, dtype="float32", bogus_keyword=1)
    assert str(caught.value).startswith(f"cannot load {folder}: ")  # not blamed on the map
    assert str(caught.value).endswith("'bogus_keyword' (given to from_pretrained as bogus_keyword=...)")


def test_a_map_on_gpus_this_machine_lacks_is_refused_naming_them_before_loading(
    config_folder: Callable[[str], Path],
) -> None:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    beyond = {name: gpus if name == "lm_head" else place for name, place in CPU_AND_DISK.items()}
    assert absent_devices(beyond.values()) == f"GPU {gpus}"
    assert absent_devices([*CPU_AND_DISK.values(), f"cuda:{gpus + 1}", gpus]) == f"GPU {gpus}, GPU {gpus + 1}"
    assert absent_devices(CPU_AND_DISK.values()) == ""
    # refused before the checkpoint is looked at: a config-only folder would be refused there
    with pytest.raises(ProfilingError, match=f"places units on GPU {gpus}, which this machine lacks"):
        load_with_map(str(config_folder("llama")), beyond, dtype="float32")
