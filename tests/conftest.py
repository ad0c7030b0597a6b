"""Tiny real models built from configs, shared by every test folder.

Each fixture is a folder as users have them: ``config.json`` alone, or with safetensors weights
written by ``save_pretrained``. Nothing is downloaded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from filelock import FileLock
from hypothesis import settings
from transformers import BertConfig
from transformers import GPT2Config
from transformers import LlamaConfig
from transformers import PretrainedConfig
from transformers import T5Config

from storage import Store
from tuner.core.codec import hardware_from_dict
from tuner.core.codec import to_dict
from tuner.core.domain import INPUT
from tuner.core.domain import Candidate
from tuner.core.domain import Device
from tuner.core.domain import DeviceMap
from tuner.core.domain import DeviceMemory
from tuner.core.domain import Edge
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import ModelGraph
from tuner.core.domain import ModelProfile
from tuner.core.domain import Phase
from tuner.core.domain import PhaseCost
from tuner.core.domain import Prediction
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.domain import Unit
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload
from tuner.core.domain import stable_hash

transformers.logging.set_verbosity_error()
# No example has a time limit: beside the suite's model loads a 200 ms stall is ordinary, and
# Hypothesis would report it as the test's failure.
settings.register_profile("tuner", deadline=None)
settings.load_profile("tuner")

TINY_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "llama": lambda: LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=256,
        architectures=["LlamaForCausalLM"],
    ),
    "gpt2": lambda: GPT2Config(
        n_embd=64,
        n_layer=3,
        n_head=4,
        vocab_size=128,
        n_positions=256,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["GPT2LMHeadModel"],
    ),
    "t5": lambda: T5Config(
        d_model=64,
        d_ff=128,
        num_layers=3,
        num_decoder_layers=3,
        num_heads=4,
        d_kv=16,
        vocab_size=128,
        decoder_start_token_id=0,
        architectures=["T5ForConditionalGeneration"],
    ),
    "bert": lambda: BertConfig(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=128,
        architectures=["BertForMaskedLM"],
    ),
}


def model_class(config: PretrainedConfig) -> type[transformers.PreTrainedModel]:
    return getattr(transformers, config.architectures[0])


@pytest.fixture(scope="session")
def config_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A folder holding only the config.json of a tiny model, by family name."""
    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            folder = tmp_path_factory.mktemp(f"{family}-config")
            TINY_CONFIGS[family]().save_pretrained(folder)
            made[family] = folder
        return made[family]

    return make


@pytest.fixture(scope="session")
def weights_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A folder with config.json and safetensors weights of a tiny model, by family name."""
    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            folder = tmp_path_factory.mktemp(f"{family}-weights")
            config = TINY_CONFIGS[family]()
            torch.manual_seed(0)
            model_class(config)(config).save_pretrained(folder)
            made[family] = folder
        return made[family]

    return make


@pytest.fixture(params=sorted(TINY_CONFIGS))
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are collected everywhere and skipped, saying why, without CUDA;
    ``pytest -m gpu`` on a machine with a GPU runs just them."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m gpu` on a machine with one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads; on a busy two-core box OpenMP spinning makes
    every call 100x slower. The thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tuner.db'}"


@pytest.fixture(scope="session")
def this_machine(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> HardwareProfile:
    """This machine as `tuner hardware` measures it, measured once per test session: the
    measurement takes 15-20 s here, and a test about models and runs would otherwise pay it in
    every fresh database (tests about the measuring itself measure on their own). Under
    pytest-xdist the first worker to need it measures and the others read what it wrote (each
    measuring would also slow the others down)."""
    from profiler.hardware import measure_hardware

    if worker_id == "master":
        return measure_hardware()
    shared = tmp_path_factory.getbasetemp().parent / "this_machine.json"
    with FileLock(f"{shared}.lock"):
        if not shared.is_file():
            shared.write_text(json.dumps(to_dict(measure_hardware())))
        return hardware_from_dict(json.loads(shared.read_text()))


@pytest.fixture(scope="session")
def store_this_machine(this_machine: HardwareProfile) -> Callable[[str], str]:
    """Stores `this_machine` in the database at a URL (creating its schema), and gives the URL
    back: `optimize`, `price` and `validate` then find this machine measured, as after a user's
    first run."""

    def store(url: str) -> str:
        with Store(url) as opened:
            opened.save_hardware(this_machine)
        return url

    return store


@pytest.fixture
def measured_db_url(tmp_path: Path, store_this_machine: Callable[[str], str]) -> str:
    """A SQLite database that already holds this machine's measured hardware."""
    return store_this_machine(f"sqlite:///{tmp_path / 'tuner.db'}")


#: libpq form of the server the `postgres` tests use; test databases are made next to `test`.
POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty database on the local server, dropped after the test."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"PostgreSQL does not answer at {POSTGRES_ADMIN_DSN}: {str(e).strip().splitlines()[0]}")
    name = f"tuner_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        # FORCE: a store that a failing test left open must not keep the database alive.
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


# Small hand-made value objects, for tests of the codec, the storage and the reports.


@pytest.fixture
def graph() -> ModelGraph:
    units = (
        Unit("model.embed_tokens", "Embedding", param_bytes=4096, buffer_bytes=0, signature="emb"),
        Unit("model.rotary_emb", "LlamaRotaryEmbedding", param_bytes=0, buffer_bytes=64, signature="rot"),
        Unit("model.layers.0", "LlamaDecoderLayer", param_bytes=8192, buffer_bytes=0, signature="layer"),
        Unit("model.layers.1", "LlamaDecoderLayer", param_bytes=8192, buffer_bytes=0, signature="layer"),
        Unit("model.norm", "LlamaRMSNorm", param_bytes=64, buffer_bytes=0, signature="norm"),
        Unit("lm_head", "Linear", param_bytes=0, buffer_bytes=0, executed=True, calls=1, signature="head"),
    )
    edges = (
        Edge(INPUT, "model.embed_tokens", prefill_bytes=64, decode_bytes=8),
        Edge("model.embed_tokens", "model.layers.0", prefill_bytes=2048, decode_bytes=16),
        Edge("model.rotary_emb", "model.layers.0", prefill_bytes=512, decode_bytes=4),
        Edge("model.rotary_emb", "model.layers.1", prefill_bytes=512, decode_bytes=4),
        Edge("model.layers.0", "model.layers.1", prefill_bytes=2048, decode_bytes=16),
        Edge("model.layers.1", "model.norm", prefill_bytes=2048, decode_bytes=16),
        Edge("model.norm", "lm_head", prefill_bytes=2048, decode_bytes=16),
    )
    return ModelGraph(
        model_name="/tmp/tiny-llama",
        architecture="LlamaForCausalLM",
        dtype="float32",
        fingerprint=stable_hash({"model": "tiny-llama", "dtype": "float32"}),
        units=units,
        edges=edges,
        tied_groups=(("model.embed_tokens", "lm_head"),),
        no_split_classes=("LlamaDecoderLayer",),
        weights="safetensors",
    )


@pytest.fixture
def hardware() -> HardwareProfile:
    devices = (
        Device(
            "0",
            "cuda",
            "NVIDIA H100",
            80 * 2**30,
            79 * 2**30,
            {"float32": 6.7e13, "float16": 9.9e14},
            3.35e12,
        ),
        Device("cpu", "cpu", "Xeon", 64 * 2**30, 60 * 2**30, {"float32": 1.1e12}, 2.1e11),
        Device("disk", "disk", "/tmp/offload", 2**40, 2**39),
    )
    links = (
        Link("0", "cpu", alpha_s=1.1e-5, beta_bytes_per_s=2.5e10),
        Link("cpu", "0", alpha_s=1.2e-5, beta_bytes_per_s=2.4e10),
        Link("disk", "cpu", alpha_s=1e-4, beta_bytes_per_s=3e9),
    )
    return HardwareProfile(devices=devices, links=links, source="measured", host="node-7")


@pytest.fixture
def workload() -> Workload:
    return Workload(batch=2, seq=64, new_tokens=8, dtype="float32")


@pytest.fixture
def model_profile(graph: ModelGraph, hardware: HardwareProfile, workload: Workload) -> ModelProfile:
    units = []
    for index, unit in enumerate(graph.units):
        for device in ("0", "cpu"):
            for phase in workload.phases:
                units.append(
                    UnitProfile(
                        unit=unit.name,
                        device=device,
                        phase=phase,
                        # Thirds are not exact in binary: the stored float must come back bit-equal.
                        time_s=(index + 1) / 3 * (1e-4 if phase is Phase.DECODE else 1e-3),
                        activation_peak_bytes=1024 * (index + 1),
                        output_bytes=512,
                        cache_bytes=256 if unit.module_class == "LlamaDecoderLayer" else 0,
                        kv_bytes_per_token=32 if unit.module_class == "LlamaDecoderLayer" else 0,
                        measured_as="model.layers.0" if unit.name == "model.layers.1" else unit.name,
                        repeats=5,
                    )
                )
    return ModelProfile(
        graph=graph,
        workload=workload,
        hardware_fingerprint=hardware.fingerprint,
        units=tuple(units),
        full=True,
        seconds=12.345678901234567,
    )


def priced(dmap: DeviceMap, new_tokens: int, scale: float = 1.0, gpu_limit: int = 2**20) -> Prediction:
    """A prediction for `dmap`: thirds (not exact in binary) so stored floats must come back bit-equal."""
    on_gpu = sum(1 for _, place in dmap.placements if place == "0")
    return Prediction(
        prefill=PhaseCost(compute_s=scale / 3 * 1e-2, stream_s=scale * 2e-3, transfer_s=scale / 7 * 1e-4),
        decode=PhaseCost(compute_s=scale / 3 * 1e-3, stream_s=0.0, transfer_s=scale / 7 * 1e-5),
        new_tokens=new_tokens,
        memory=(
            DeviceMemory("0", 8192 * on_gpu, 0, 256 * on_gpu, 2048, 512, gpu_limit),
            DeviceMemory("cpu", 4096 * (len(dmap.placements) - on_gpu), 64, 0, 1024, 0, 2**30),
        ),
    )


@pytest.fixture
def run(graph: ModelGraph, hardware: HardwareProfile, workload: Workload) -> Run:
    """A run as `tuner optimize` starts it: running, its baselines priced, no winner yet."""
    names = graph.unit_names
    on_gpu = DeviceMap(tuple((name, "0") for name in names))
    split = DeviceMap(tuple((name, "0" if index < 3 else "cpu") for index, name in enumerate(names)))
    on_cpu = DeviceMap(tuple((name, "cpu") for name in names))
    baselines = (
        Candidate("auto", split, priced(split, workload.new_tokens, scale=2.0)),
        # Over the GPU's limit: priced, but not feasible.
        Candidate("single:0", on_gpu, priced(on_gpu, workload.new_tokens, gpu_limit=1024)),
        Candidate("sequential", on_cpu, None),
    )
    constraints = {
        "max_memory": {"0": 2**20, "cpu": 2**30},
        "pins": [["lm_head", "cpu"]],
        "exclude": ["disk"],
    }
    return Run(
        id=0,
        key=stable_hash([graph.fingerprint, hardware.fingerprint, str(workload), constraints]),
        model_name=graph.model_name,
        model_fingerprint=graph.fingerprint,
        hardware_name="this machine",
        hardware_fingerprint=hardware.fingerprint,
        workload=workload,
        max_memory={"0": 2**20, "cpu": 2**30},
        pins=(("lm_head", "cpu"),),
        exclude=("disk",),
        study_name="tuner-run-1",
        status=RunStatus.RUNNING,
        baselines=baselines,
        phase_seconds={"profile": 1.25, "baselines": 0.5},
    )
