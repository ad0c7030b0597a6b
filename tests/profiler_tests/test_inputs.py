"""Inputs beyond token ids: encoder-decoders that build their own masks, speech features, images.

Tiny real models of tests/families.py, built from their configs; nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers

from profiler.flops import count_work
from profiler.inputs import check_workload
from profiler.inputs import model_inputs
from profiler.layers import profile_units
from profiler.metavalues import KnownValues
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from profiler.validate import validate
from tests.families import FAMILIES
from tests.families import save_family
from tuner.core.domain import DeviceMap
from tuner.core.domain import Phase
from tuner.core.domain import Workload
from tuner.core.exceptions import ProfilingError
from tuner.core.exceptions import WorkloadError

pytestmark = pytest.mark.usefixtures("one_thread")

GENERATE = Workload(seq=8, new_tokens=2)


def meta_of(folder: Path) -> object:
    return build_meta_model(resolve_source(str(folder)))


def test_a_mask_read_on_meta_is_answered_from_the_inputs_values() -> None:
    with KnownValues():
        mask = torch.ones(2, 8, device="meta")  # what BART's decoder makes when given no mask
        assert bool(mask.sum() == mask.numel())
        ids = torch.tensor([[5, 100, 100, 7]]).to("meta")
        assert int((ids == 100).sum()) == 2
        ids[:, 0] = 100  # an update in place updates the known value
        assert int((ids == 100).sum()) == 3


def test_a_read_of_a_value_no_input_determines_still_fails() -> None:
    weight = torch.empty(4, 4, device="meta")  # made outside: a weight, no known value
    with KnownValues(), pytest.raises(RuntimeError, match="meta tensors"):
        bool((weight @ weight).sum() > 0)


@pytest.mark.parametrize("family", ["bart", "biogpt"])
def test_models_that_build_their_own_masks_trace_on_meta_with_their_decoder_and_kv_cache(
    family: str, tmp_path: Path
) -> None:
    meta = build_meta_model(resolve_source(str(save_family(family, tmp_path, weights=False))))
    workload = Workload(seq=8, new_tokens=2, dtype=meta.dtype)
    graph = trace_graph(meta, workload)
    assert all(u.executed for u in graph.units if ".layers." in u.name)
    decode = [u for u in graph.units if u.decode_calls]
    assert decode and all("encoder" not in u.name for u in decode)


def test_whisper_is_fed_its_feature_extractors_window_and_decodes_from_its_start_token(
    tmp_path: Path,
) -> None:
    folder = save_family("whisper", tmp_path, weights=False)
    meta = build_meta_model(resolve_source(str(folder)))
    inputs = check_workload(meta.runnable, GENERATE, folder)
    assert inputs.kind == "speech" and inputs.features == (80, 3000)  # 30 s of 80 mel bins, padded
    prefill = inputs.prefill(torch.device("cpu"), torch.float32)
    assert set(prefill) == {"input_features", "decoder_input_ids"}
    assert prefill["decoder_input_ids"].tolist() == [[FAMILIES["whisper"].config().decoder_start_token_id]]
    graph = trace_graph(meta, Workload(seq=8, new_tokens=2, dtype=meta.dtype))
    assert all(u.executed for u in graph.units if u.name != "proj_out" or u.decode_calls)


def test_a_saved_feature_extractor_decides_the_window(tmp_path: Path) -> None:
    from transformers import WhisperFeatureExtractor

    folder = save_family("whisper", tmp_path, weights=False)
    WhisperFeatureExtractor(feature_size=80, chunk_length=30, hop_length=160).save_pretrained(folder)
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    assert settings["feature_extractor_type"] == "WhisperFeatureExtractor"
    meta = build_meta_model(resolve_source(str(folder)))
    assert model_inputs(meta.runnable, GENERATE, folder).features == (80, 3000)


def test_a_waveform_longer_than_the_speech_positions_is_cut_to_the_longest_that_fits(tmp_path: Path) -> None:
    folder = save_family("speecht5", tmp_path, weights=False)
    meta = build_meta_model(resolve_source(str(folder)))
    inputs = check_workload(meta.runnable, GENERATE, folder)
    # convolutions (kernel 10, stride 5) then (3, 2): 5019 samples make (5019 - 10) // 5 + 1 = 1002
    # frames, then (1002 - 3) // 2 + 1 = 500 positions, all max_speech_positions takes; 5020 make 501
    assert inputs.kind == "speech" and inputs.features == (5019,)
    graph = trace_graph(meta, Workload(seq=8, new_tokens=2, dtype=meta.dtype))
    idle = {u.name for u in graph.units if "encoder" in u.name and not u.executed}
    assert idle == {"speecht5.encoder.prenet.masked_spec_embed"}  # masks speech in training only


def test_llava_gets_an_image_at_the_processors_size_and_its_vision_tower_is_priced(tmp_path: Path) -> None:
    folder = save_family("llava", tmp_path, weights=False)
    meta = build_meta_model(resolve_source(str(folder)))
    workload = Workload(seq=8, new_tokens=2, dtype=meta.dtype)
    inputs = check_workload(meta.runnable, workload, folder)
    # a 32 x 32 image in 8 x 8 patches: 16 features (the default strategy drops CLIP's class token)
    assert inputs.image == (3, 32, 32) and inputs.image_tokens == 16 and inputs.prompt_tokens == 24
    ids = inputs.prompt(torch.device("cpu"), torch.float32, seed=0)["input_ids"]
    assert int((ids == 100).sum()) == 16  # random text tokens never hit the placeholder
    graph = trace_graph(meta, workload)
    vision = [u.name for u in graph.units if "vision_tower" in u.name]
    assert vision and all(graph.unit(name).executed for name in vision)
    work = count_work(meta, workload)
    assert all(work[name, Phase.PREFILL].flops > 0 for name in vision if ".layers." in name)
    assert not any((name, Phase.DECODE) in work for name in vision)  # the image is encoded once


def test_the_processors_crop_decides_the_image_and_a_size_the_tower_refuses_is_one_line(
    tmp_path: Path,
) -> None:
    folder = save_family("llava", tmp_path, weights=False)
    processor = {
        "size": {"shortest_edge": 40},
        "crop_size": {"height": 32, "width": 32},
        "do_center_crop": True,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    meta = build_meta_model(resolve_source(str(folder)))
    assert model_inputs(meta.runnable, GENERATE, folder).image == (3, 32, 32)
    processor["crop_size"] = {"height": 16, "width": 16}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    with pytest.raises(WorkloadError, match="no image features from pixel values of 16 x 16 alone"):
        model_inputs(meta.runnable, Workload(seq=9, new_tokens=2), folder)


def test_image_tokens_count_against_the_positions(tmp_path: Path) -> None:
    folder = save_family("llava", tmp_path, weights=False)
    meta = build_meta_model(resolve_source(str(folder)))
    with pytest.raises(WorkloadError, match="seq \\+ image tokens \\+ new tokens - 1 = 257 exceeds"):
        check_workload(meta.runnable, Workload(seq=240, new_tokens=2), folder)
    check_workload(meta.runnable, Workload(seq=239, new_tokens=2), folder)  # the last token is not fed back


def test_the_last_new_token_takes_no_position(config_folder: Callable[[str], Path]) -> None:
    meta = build_meta_model(resolve_source(str(config_folder("gpt2"))))  # 256 learned positions
    workload = Workload(seq=255, new_tokens=2)
    check_workload(meta.runnable, workload)
    trace_graph(meta, workload)  # the profile's decode step is at position 255
    with pytest.raises(WorkloadError, match="seq \\+ new tokens - 1 = 257 exceeds the model's 256 positions"):
        check_workload(meta.runnable, Workload(seq=256, new_tokens=2))
    # one new token: generate feeds nothing back, but the profile times a decode step at 256
    with pytest.raises(WorkloadError, match="seq \\+ 1 \\(the decode step a profile times\\) = 257 exceeds"):
        check_workload(meta.runnable, Workload(seq=256, new_tokens=1))


def test_a_bare_model_asked_to_generate_is_told_the_class_with_the_head_that_does(tmp_path: Path) -> None:
    folder = save_family("bart", tmp_path, weights=False)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["BartModel"]}))
    meta = build_meta_model(resolve_source(str(folder)))
    with pytest.raises(WorkloadError) as refused:
        check_workload(meta.runnable, Workload(new_tokens=2), folder)
    assert str(refused.value) == (
        "BartModel does not generate text; ask for new_tokens=0 (--new-tokens 0), a forward-only "
        "workload; config.json's architectures names the bare BartModel, without the head that "
        "generates: BartForConditionalGeneration has it"
    )
    bert = build_meta_model(resolve_source(str(save_family("bert", tmp_path / "bert", weights=False))))
    with pytest.raises(WorkloadError, match="a forward-only workload$"):  # a head of its own: no hint
        check_workload(bert.runnable, Workload(new_tokens=2))


def test_whispers_generate_counts_the_last_new_token_against_its_target_positions(tmp_path: Path) -> None:
    folder = save_family("whisper", tmp_path, weights=False)  # 64 target positions
    meta = build_meta_model(resolve_source(str(folder)))
    check_workload(meta.runnable, Workload(new_tokens=63), folder)
    with pytest.raises(
        WorkloadError, match="start token \\+ new tokens = 65 exceeds the model's 64 positions"
    ):
        check_workload(meta.runnable, Workload(new_tokens=64), folder)
    model = transformers.WhisperForConditionalGeneration(FAMILIES["whisper"].config()).eval()
    features = torch.zeros(1, 80, 3000)
    assert (
        model.generate(features, max_new_tokens=63, min_new_tokens=63).shape[1] == 63
    )  # start token dropped
    with pytest.raises(ValueError, match="exceeds the `max_target_positions`"):
        model.generate(features, max_new_tokens=64)
    # BART's generate feeds back all but the last: 64 new tokens take 64 positions
    bart = save_family("bart", tmp_path / "bart", weights=False)
    limit = json.loads((bart / "config.json").read_text())["max_position_embeddings"]
    check_workload(build_meta_model(resolve_source(str(bart))).runnable, Workload(new_tokens=limit), bart)


def test_a_vision_model_is_fed_pixels(tmp_path: Path) -> None:
    folder = save_family("vit", tmp_path, weights=False)
    meta = build_meta_model(resolve_source(str(folder)))
    workload = Workload(seq=8, new_tokens=0, dtype=meta.dtype)
    graph = trace_graph(meta, workload)
    measured = profile_units(meta, graph, workload, torch.device("cpu"), repeats=1)
    assert {p.unit for p in measured} == {u.name for u in graph.units if u.executed}


@pytest.mark.parametrize("family", ["whisper", "llava"])
def test_validate_feeds_the_profilers_inputs_to_a_split_map(family: str, tmp_path: Path) -> None:
    folder = save_family(family, tmp_path / family)
    meta = build_meta_model(resolve_source(str(folder)))
    graph = trace_graph(meta, Workload(seq=8, new_tokens=2, dtype=meta.dtype))
    places = {name: "disk" if i % 2 else "cpu" for i, name in enumerate(graph.unit_names)}
    for group in graph.tied_groups:  # units that share a weight share a placement
        for name in group:
            places[name] = places[group[0]]
    # Whisper's own generate reads its first weight's device: optimize keeps that unit resident
    places[graph.unit_names[0]] = "cpu"
    result = validate(str(folder), DeviceMap(tuple(places.items())), GENERATE, repeats=1, warmup=0)
    assert "disk" in places.values()
    assert result.ok and result.tokens_equal, result.reason


def test_optimize_refuses_a_prompt_whose_image_tokens_overflow_before_anything_is_stored(
    tmp_path: Path,
) -> None:
    import tuner

    folder = save_family("llava", tmp_path / "llava", weights=False)
    db = tmp_path / "tuner.db"
    with pytest.raises(WorkloadError, match="seq \\+ image tokens \\+ new tokens - 1 = 257 exceeds"):
        tuner.optimize(str(folder), seq=240, new_tokens=2, db=f"sqlite:///{db}")
    assert not db.exists()


def test_ids_and_masks_of_a_large_batch_are_known_and_a_large_float_factory_is_not() -> None:
    with KnownValues():
        ids = torch.full((2048, 1024), 5, dtype=torch.long, device="meta")  # 2M tokens
        mask = torch.ones_like(ids)
        assert bool(mask.sum() == mask.numel())  # what transformers' masking code reads
        cache = torch.zeros(2048, 1024, device="meta")  # a preallocated cache: never computed
        with pytest.raises(RuntimeError, match="meta tensors"):
            bool(cache.sum() == 0)


def test_a_batch_of_millions_of_tokens_traces_and_one_beyond_what_the_meta_pass_knows_says_so(
    config_folder: Callable[[str], Path],
) -> None:
    meta = build_meta_model(resolve_source(str(config_folder("llama"))))
    graph = trace_graph(meta, Workload(batch=16384, seq=128, new_tokens=2, dtype=meta.dtype))
    assert all(u.executed for u in graph.units if ".layers." in u.name)
    beyond = Workload(batch=131073, seq=128, new_tokens=2, dtype=meta.dtype)
    refused = r"failed: batch x prompt = 16777344 tokens, .* ask for a smaller batch$"
    with pytest.raises(ProfilingError, match=refused):
        trace_graph(meta, beyond)


def test_an_encoder_decoder_with_no_first_decoder_token_is_refused_unless_its_folder_names_one(
    tmp_path: Path,
) -> None:
    from transformers import GenerationConfig
    from transformers import T5Config

    T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16, vocab_size=100).save_pretrained(
        tmp_path
    )
    meta = build_meta_model(resolve_source(str(tmp_path)))
    assert check_workload(meta.runnable, Workload(seq=8, new_tokens=0), tmp_path).decoder_start == 0
    with pytest.raises(
        WorkloadError, match="T5ForConditionalGeneration cannot generate: .* no decoder_start_token_id"
    ):
        check_workload(meta.runnable, GENERATE, tmp_path)
    # generate reads the generation config from_pretrained loads from the folder
    GenerationConfig(decoder_start_token_id=7).save_pretrained(tmp_path)
    meta = build_meta_model(resolve_source(str(tmp_path)))
    assert check_workload(meta.runnable, GENERATE, tmp_path).decoder_start == 7
