"""Tiny real models built from configs, shared by every test folder.

Each fixture is a folder as users have them: ``config.json`` alone, or with safetensors weights
written by ``save_pretrained``. Nothing is downloaded.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from transformers import BertConfig
from transformers import GPT2Config
from transformers import LlamaConfig
from transformers import PretrainedConfig
from transformers import T5Config

transformers.logging.set_verbosity_error()

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


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tuner.db'}"


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
