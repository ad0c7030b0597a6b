"""A database with two tuned runs of a tiny model for a shipped spec (seconds: planning only), and
the service on it, called in-process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
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


@pytest.fixture
def served(db: str) -> Iterator[str]:
    """`tuner serve` on the tuned database, as a process on a free port of this machine: its URL.
    Stopped with SIGTERM after the test, which checks that it stopped cleanly."""
    env = {key: value for key, value in os.environ.items() if key != "TUNER_API_TOKEN"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tuner", "serve", "--port", "0", "--db", db],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stderr is not None
    said = process.stderr.readline()  # where it listens: the port the system chose
    url = said.partition(" on ")[2].partition("/ ")[0]
    assert said == f"serving {db} on {url}/ (Ctrl-C stops)\n" and not url.endswith(":0"), said
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as answer:
                assert json.load(answer) == {"status": "ok"}
            break
        except OSError:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "tuner serve did not answer"
            time.sleep(0.2)
    try:
        yield url
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in err, err
