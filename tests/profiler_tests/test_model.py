from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from accelerate.utils import compute_module_sizes
from transformers import AutoConfig
from transformers import AutoModelForCausalLM

from profiler.inputs import model_inputs
from profiler.memory import HeldBytes
from profiler.model import build_meta_model
from profiler.model import kept_by_generate
from profiler.model import no_split_classes
from profiler.model import placeable_units
from profiler.model import trace_graph
from profiler.source import resolve_source
from tests.conftest import model_class
from tests.families import save_family
from tests.families import with_short_audio
from tuner.core.domain import INPUT
from tuner.core.domain import DeviceMap
from tuner.core.domain import ModelGraph
from tuner.core.domain import Workload
from tuner.core.exceptions import ModelSourceError
from tuner.core.exceptions import ProfilingError

GENERATES = {"llama": 8, "gpt2": 8, "t5": 8, "bert": 0}


def graph_of(
    folder: Path, dtype: str = "float32", new_tokens: int = 4, batch: int = 1, seq: int = 8
) -> ModelGraph:
    meta = build_meta_model(resolve_source(str(folder)), dtype)
    return trace_graph(meta, Workload(batch=batch, seq=seq, new_tokens=new_tokens, dtype=dtype))


def test_llama_units_in_execution_order(config_folder: Callable[[str], Path]) -> None:
    graph = graph_of(config_folder("llama"))
    assert graph.unit_names == (
        "model.embed_tokens",
        "model.rotary_emb",
        "model.layers.0",
        "model.layers.1",
        "model.layers.2",
        "model.norm",
        "lm_head",
    )
    # Registration order differs: execution order comes from the real forward, not from the tree.
    model = build_meta_model(resolve_source(str(config_folder("llama"))), "float32").model
    registered = [name for name, _ in model.model.named_children()]
    assert registered.index("rotary_emb") > registered.index("layers")
    assert graph.no_split_classes == ("LlamaDecoderLayer",)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_unit_bytes_equal_accelerate(family: str, dtype: str, weights_folder: Callable[[str], Path]) -> None:
    folder = weights_folder(family)
    graph = graph_of(folder, dtype, new_tokens=0)
    loaded = model_class(graph_config(folder)).from_pretrained(folder, dtype=getattr(torch, dtype))
    sizes = compute_module_sizes(loaded)
    for unit in graph.units:
        assert unit.bytes == sizes[unit.name], unit.name
    assert graph.total_bytes == sizes[""]


def test_param_tensors_are_the_tensors_an_offload_hook_loads(config_folder: Callable[[str], Path]) -> None:
    graph = graph_of(config_folder("llama"))
    model = build_meta_model(resolve_source(str(config_folder("llama"))), "float32").model
    for unit in graph.units:
        owned = len(list(model.get_submodule(unit.name).parameters()))
        assert unit.param_tensors == owned, unit.name
    # q, k, v, o, gate, up, down and two norms
    assert graph.unit("model.layers.0").param_tensors == 9
    assert graph.unit("model.rotary_emb").param_tensors == 0


def graph_config(folder: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


def test_gpt2_tied_embeddings_form_a_group(config_folder: Callable[[str], Path]) -> None:
    graph = graph_of(config_folder("gpt2"))
    assert ("lm_head", "transformer.wte") in graph.tied_groups
    assert graph.unit("lm_head").param_bytes == 0  # the tied weight counts once, in wte


def test_rotary_embedding_feeds_every_decoder_layer(config_folder: Callable[[str], Path]) -> None:
    graph = graph_of(config_folder("llama"), batch=2, seq=8)
    rotary = {e.consumer: e for e in graph.edges if e.producer == "model.rotary_emb"}
    assert set(rotary) == {"model.layers.0", "model.layers.1", "model.layers.2"}
    head_dim = 64 // 4
    # cos and sin, 1 x seq x head_dim in float32: position ids are shared by the whole batch
    assert rotary["model.layers.1"].prefill_bytes == 2 * 8 * head_dim * 4
    assert rotary["model.layers.1"].decode_bytes == 2 * 1 * head_dim * 4
    chain = {(e.producer, e.consumer) for e in graph.edges}
    assert ("model.layers.0", "model.layers.1") in chain
    assert ("model.norm", "lm_head") in chain


def test_t5_encoder_output_feeds_every_decoder_block(config_folder: Callable[[str], Path]) -> None:
    graph = graph_of(config_folder("t5"), seq=8)
    blocks = [u.name for u in graph.units if u.name.startswith("decoder.block.")]
    encoder_out = [e for e in graph.edges if e.producer.startswith("encoder.") and e.consumer in blocks]
    assert sorted(e.consumer for e in encoder_out) == blocks
    assert all(e.prefill_bytes == 8 * 64 * 4 for e in encoder_out)
    # A decode step reuses the encoder's output: the encoder itself does not run again.
    assert all(
        graph.unit(u.name).decode_calls == 0 for u in graph.units if u.name.startswith("encoder.block")
    )
    assert all(graph.unit(name).decode_calls == 1 for name in blocks)


def test_unit_that_never_runs_sits_before_its_neighbour(config_folder: Callable[[str], Path]) -> None:
    graph = graph_of(config_folder("t5"))
    shared = graph.unit("shared")
    assert not shared.executed
    names = graph.unit_names
    assert names.index("shared") == names.index("encoder.embed_tokens") - 1


def test_identical_layers_share_a_signature(config_folder: Callable[[str], Path]) -> None:
    graph = graph_of(config_folder("llama"))
    layers = [u for u in graph.units if u.module_class == "LlamaDecoderLayer"]
    assert len({u.signature for u in layers}) == 1
    assert graph.unit("model.norm").signature != layers[0].signature


def test_inputs_reach_the_first_unit(family: str, config_folder: Callable[[str], Path]) -> None:
    graph = graph_of(config_folder(family), new_tokens=GENERATES[family] and 4)
    first_executed = next(u for u in graph.units if u.executed)
    assert any(e.producer == INPUT and e.consumer == first_executed.name for e in graph.edges)
    for edge in graph.edges:
        assert edge.prefill_bytes >= 0 and edge.decode_bytes >= 0


def test_device_map_over_reported_units_loads_and_matches(
    weights_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    folder = weights_folder("llama")
    graph = graph_of(folder, new_tokens=0)
    # Every other unit to disk: a real split the CPU-only machine can load.
    device_map = {name: ("disk" if i % 2 else "cpu") for i, name in enumerate(graph.unit_names)}
    reference = AutoModelForCausalLM.from_pretrained(folder)
    split = AutoModelForCausalLM.from_pretrained(folder, device_map=device_map, offload_folder=tmp_path)
    ids = torch.arange(12).reshape(1, 12) % 128
    with torch.no_grad():
        assert torch.allclose(reference(ids).logits, split(ids).logits, atol=1e-5)
    assert set(split.hf_device_map) == set(graph.unit_names)


def test_a_tied_head_loads_the_whole_embedding_and_the_embedding_is_a_lookup(
    config_folder: Callable[[str], Path],
) -> None:
    graph = graph_of(config_folder("gpt2"))
    wte, head = graph.unit("transformer.wte"), graph.unit("lm_head")
    assert wte.lookup and not head.lookup
    assert head.param_bytes == 0 and head.loaded_bytes == wte.param_bytes > 0
    assert head.param_tensors == 1


def test_a_parametrized_module_is_one_unit_and_a_map_of_its_parts_places_it() -> None:
    """accelerate's planner splits wav2vec2's weight-normed convolution into its bias and the
    parametrization's two tensors; placed apart they fail in the forward, so it is one unit here,
    and a map that names its parts (accelerate's) places it where they all go."""
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(4, 4, 3), name="weight", dim=2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sequential(conv, torch.nn.GELU()))
    names = [name for name, _ in placeable_units(model, set())]
    assert names == ["0", "1.0", "1.1"]

    parts = ["1.0.bias", "1.0.parametrizations.weight.original0", "1.0.parametrizations.weight.original1"]
    together = DeviceMap.from_hf({"0": "cpu", **dict.fromkeys(parts, "disk"), "1.1": "cpu"}, names)
    assert together.placement("1.0") == "disk"
    with pytest.raises(ValueError, match=r"places the parts of '1.0' apart \(cpu, disk\)"):
        DeviceMap.from_hf({"0": "cpu", **dict.fromkeys(parts, "disk"), parts[0]: "cpu", "1.1": "cpu"}, names)


def test_a_parameter_made_by_a_legacy_constructor_is_on_meta_too(tmp_path: Path) -> None:
    # wav2vec2's masked_spec_embed is ``nn.Parameter(torch.Tensor(n).uniform_())``, which the
    # meta device context does not reach; on the cpu it made ``model.device`` the cpu
    folder = save_family("wav2vec2", tmp_path / "wav2vec2", weights=False)
    model = build_meta_model(resolve_source(str(folder)), "float32").model
    assert [name for name, parameter in model.named_parameters() if not parameter.is_meta] == []
    assert model.device.type == "meta"


@pytest.mark.parametrize("family", ["wav2vec2", "whisper", "speecht5", "biogpt", "llama", "mamba", "t5"])
def test_what_each_unit_finds_held_on_meta_is_what_the_real_forward_holds(
    family: str, tmp_path: Path
) -> None:
    """The traced graph's held bytes, sized on the meta device, against the same count taken on
    the model built for real on the cpu: prefill and a decode step, units hooked alike."""
    folder = save_family(family, tmp_path, weights=False)
    if family == "wav2vec2":
        with_short_audio(folder)
    meta = build_meta_model(resolve_source(str(folder)), "float32")
    workload = Workload(seq=8, new_tokens=2 if meta.model.can_generate() else 0)
    graph = trace_graph(meta, workload)

    config = AutoConfig.from_pretrained(folder)
    model = model_class(config)(config).eval()
    held = HeldBytes(existing=[*model.parameters(), *model.buffers()])
    for name, entry in placeable_units(model, no_split_classes(model)):
        if isinstance(entry, torch.nn.Module):
            entry.register_forward_pre_hook(lambda module, args, name=name: held.unit_starts(name))
            entry.register_forward_hook(lambda module, args, output, name=name: held.unit_ends(name))
    inputs = model_inputs(model, workload, folder)
    with torch.no_grad(), held:  # as generate runs it: the trace's own forwards, on the cpu
        prefill = inputs.prefill(torch.device("cpu"), torch.float32)
        output = model(**prefill)
        kept = kept_by_generate(output) if workload.new_tokens else ()
        held.phase_ended(output)
        if workload.new_tokens:
            kept = kept_by_generate(output, logits=True)
            decoded = model(**inputs.decode(model, prefill, output))
            next_kept = kept_by_generate(decoded)
            held.phase_ended(decoded)
            del next_kept
        del kept

    traced = {unit.name: unit.held_bytes for unit in graph.units if unit.executed}
    assert traced == {name: held.held.get(name, 0) for name in traced}
    glue = {unit.name: unit.glue_bytes for unit in graph.units if unit.executed}
    assert glue == {name: held.glue.get(name, 0) for name in traced}
    assert all(held > 0 for held in traced.values())  # every unit's inputs at least


def test_a_model_that_needs_an_input_it_is_not_fed_is_told_what_it_was_fed(tmp_path: Path) -> None:
    """ClapModel embeds audio beside text: fed text alone, its audio tower reads None."""
    config = transformers.ClapConfig(
        text_config={
            "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1,
            "vocab_size": 128,
        },
        audio_config={
            "hidden_size": 32, "depths": [1, 1], "num_attention_heads": [2, 2],
            "patch_embeds_hidden_size": 32, "spec_size": 64, "window_size": 4, "num_mel_bins": 16,
        },
        projection_dim=16,
    )  # fmt: skip
    config.architectures = ["ClapModel"]
    config.save_pretrained(tmp_path)
    meta = build_meta_model(resolve_source(str(tmp_path)), "float32")
    with pytest.raises(ProfilingError) as raised:
        trace_graph(meta, Workload(seq=8, new_tokens=0))
    message = str(raised.value)
    assert message.startswith(f"the traced forward of {tmp_path} failed: 'NoneType' object")
    assert message.endswith("(it was fed attention_mask, input_ids; an input it needs may be missing)")


def test_a_text_tower_beside_a_vision_tower_is_fed_both(tmp_path: Path) -> None:
    """CLIPModel embeds images beside text, each from its own input: both towers run."""
    small = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1}
    config = transformers.CLIPConfig(
        text_config={**small, "vocab_size": 128}, vision_config={**small, "image_size": 32, "patch_size": 16}
    )
    config.architectures = ["CLIPModel"]
    config.save_pretrained(tmp_path)
    graph = trace_graph(
        build_meta_model(resolve_source(str(tmp_path)), "float32"), Workload(seq=8, new_tokens=0)
    )
    ran = {unit.name for unit in graph.units if unit.calls}
    assert {"vision_model.encoder.layers.0", "text_model.encoder.layers.0"} <= ran
    assert {"visual_projection", "text_projection"} <= ran


def test_a_config_that_does_not_describe_its_weights_is_refused_naming_a_weight(
    weights_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    """A config edited (or copied from another size) after the weights were saved: from_pretrained
    refuses the checkpoint, and a plan from the config would size weights it does not hold."""
    folder = tmp_path / "edited"
    shutil.copytree(weights_folder("llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 2 * config["hidden_size"]}))
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    with pytest.raises(ModelSourceError) as refused:
        build_meta_model(resolve_source(str(folder)))
    assert str(refused.value) == (
        f"{folder}: config.json does not describe its weights: model.embed_tokens.weight is "
        f"[{vocab}, {hidden}] in the checkpoint and [{vocab}, {2 * hidden}] by the config; "
        "from_pretrained would refuse to load them"
    )
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # transformers refuses it too
        AutoModelForCausalLM.from_pretrained(folder)
    build_meta_model(resolve_source(str(weights_folder("llama"))))  # its own config fits
