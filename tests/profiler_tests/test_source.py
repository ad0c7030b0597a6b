from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from profiler.model import build_meta_model
from profiler.source import load_config
from profiler.source import resolve_source
from tuner.core.exceptions import ModelSourceError


def test_config_only_folder_is_a_source(config_folder: Callable[[str], Path]) -> None:
    source = resolve_source(str(config_folder("llama")))
    assert source.weights == "config-only"
    assert source.weight_files == ()
    assert load_config(source).model_type == "llama"


def test_safetensors_folder_records_its_weights(weights_folder: Callable[[str], Path]) -> None:
    source = resolve_source(str(weights_folder("llama")))
    assert source.weights == "safetensors"
    assert [f.suffix for f in source.weight_files] == [".safetensors"]


def test_weights_change_the_fingerprint(
    config_folder: Callable[[str], Path], weights_folder: Callable[[str], Path]
) -> None:
    config_only = build_meta_model(resolve_source(str(config_folder("llama"))), "float32")
    with_weights = build_meta_model(resolve_source(str(weights_folder("llama"))), "float32")
    again = build_meta_model(resolve_source(str(weights_folder("llama"))), "float32")
    in_bf16 = build_meta_model(resolve_source(str(weights_folder("llama"))), "bfloat16")
    assert with_weights.fingerprint() == again.fingerprint()
    assert len({config_only.fingerprint(), with_weights.fingerprint(), in_bf16.fingerprint()}) == 3


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="no such model folder"):
        resolve_source(str(tmp_path / "nope"))


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_source(str(tmp_path))


def test_corrupt_config(tmp_path: Path, config_folder: Callable[[str], Path]) -> None:
    shutil.copy(config_folder("llama") / "config.json", tmp_path / "config.json")
    (tmp_path / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(ModelSourceError, match="not valid JSON"):
        resolve_source(str(tmp_path))


def test_unknown_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ModelSourceError, match="cannot read the config"):
        load_config(resolve_source(str(tmp_path)))


def test_a_config_its_class_refuses_says_why_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        '{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 3, "num_hidden_layers": 1}'
    )
    with pytest.raises(ModelSourceError) as refused:
        load_config(resolve_source(str(tmp_path)))
    assert str(refused.value) == (
        f"{tmp_path} has an invalid config: "
        "The hidden size (64) is not a multiple of the number of attention heads (3)."
    )


def test_hub_id_not_in_cache_says_how_to_fetch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="hf download some-org/some-model"):
        resolve_source("some-org/some-model")


def test_a_hub_id_whose_org_is_a_folder_here_is_a_missing_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelSourceError) as missing:
        resolve_source("models/llama")
    assert str(missing.value) == (
        "no such model folder: models/llama (models/ is a folder here, without llama; "
        "nor is it a hub id in the Hugging Face cache)"
    )
