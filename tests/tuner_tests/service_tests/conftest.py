"""A database with two tuned runs of a tiny model for a shipped spec (seconds: planning only), and
the service on it, called in-process."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import tuner
from tuner.service import create_app

SPEC = "1xA10G-24GB"
#: A token long enough for the service.
TOKEN = "s3cret-token-for-the-tests"
#: What a client on this machine looks like to the app (the test client's default is not loopback).
LOOPBACK = ("127.0.0.1", 50000)
OPTIONS = {"hardware": SPEC, "seq": 8, "new_tokens": 2, "trials": 3}


@pytest.fixture(scope="session")
def tuned_db(config_folder: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with two complete runs: no limits, and a 1 GiB cap on the GPU. Copy it."""
    path = tmp_path_factory.mktemp("service") / "tuner.db"
    model = str(config_folder("llama"))
    tuner.optimize(model, db=f"sqlite:///{path}", **OPTIONS)  # type: ignore[arg-type]
    tuner.optimize(model, max_memory={0: "1GiB"}, db=f"sqlite:///{path}", **OPTIONS)  # type: ignore[arg-type]
    return path


@pytest.fixture
def db(tuned_db: Path, tmp_path: Path) -> str:
    """The tuned database, this test's own copy."""
    shutil.copy(tuned_db, tmp_path / "tuner.db")
    return f"sqlite:///{tmp_path / 'tuner.db'}"


@pytest.fixture
def client(db: str) -> Iterator[TestClient]:
    """The service with a token, called from this machine."""
    with TestClient(create_app(db, token=TOKEN), client=LOOPBACK) as client:
        yield client
