"""The client: `tuner.device_map(..., server=...)` and `tuner export --server` fetch a stored map
from `tuner serve` in a process where torch, transformers and SQLAlchemy cannot be imported and
the database cannot be reached."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import tuner
from storage import Store
from tests.tuner_tests.conftest import run
from tests.tuner_tests.service_tests.conftest import SPEC
from tuner.core.domain import HardwareProfile
from tuner.core.domain import RunStatus
from tuner.service.app import BEST_MAX_AGE

#: Run first in the client's process: any import of these fails.
BLOCKED = (
    "import sys\n"
    "for name in ('torch', 'transformers', 'accelerate', 'sqlalchemy', 'optuna'):\n"
    "    sys.modules[name] = None\n"
)


def client(code: str) -> list[str]:
    """`code` run in a process without torch or a database: its lines of output."""
    env = {**os.environ, "TUNER_DB": "postgresql+psycopg://nobody@127.0.0.1:9/unreachable"}
    result = subprocess.run([sys.executable, "-c", BLOCKED + code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_a_client_without_torch_or_the_database_gets_the_stored_map(
    served: str, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tuner.get_run(2, db=db).model_name
    asked = {"hardware": SPEC, "seq": 8, "new_tokens": 2, "max_memory": {0: "1GiB"}}
    _, exported, _ = run(["export", "2", "--db", db], capsys)
    _, latest, _ = run(["export", "latest", "--with-max-memory", "--db", db], capsys)

    lines = client(
        "import json, tuner\n"
        "from tuner.cli import main\n"
        f"print(json.dumps(tuner.device_map({model!r}, server={served!r}, **{asked!r})))\n"
        "try:\n"
        f"    tuner.device_map({model!r}, server={served!r}, hardware={SPEC!r}, seq=9)\n"
        "except tuner.RunNotFoundError as error:\n"
        "    print(error)\n"
        "for args in (['export', '2'], ['export', 'latest', '--with-max-memory']):\n"
        "    try:\n"
        f"        main([*args, '--server', {served!r}])\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0\n"
        "print(sys.modules['torch'], sys.modules['sqlalchemy'])\n"
    )
    assert json.loads(lines[0]) == json.loads(exported)
    assert lines[1].startswith(
        f"{served}: no complete run tuned for this request; queue it (POST /v1/runs) or tune it with: "
        "tuner optimize"
    )
    assert "\n".join(lines[2:-1]) == exported.strip() + "\n" + latest.strip()
    assert lines[-1] == "None None"  # still blocked: never imported


def test_a_map_from_a_service_is_named_by_what_a_stored_run_answers(served: str) -> None:
    with pytest.raises(tuner.ConstraintError, match="name the hardware spec"):
        tuner.device_map("m", server=served)
    with pytest.raises(tuner.ConstraintError, match="server: pins does not apply"):
        tuner.device_map("m", server=served, hardware=SPEC, pins={"lm_head": 0})
    with pytest.raises(tuner.ConstraintError, match="server: db does not apply"):
        tuner.device_map("m", server=served, hardware=SPEC, db="sqlite://")
    with pytest.raises(tuner.ConstraintError, match="http:// or https://"):
        tuner.device_map("m", server="ftp://host", hardware=SPEC)
    with pytest.raises(tuner.ConstraintError, match="unknown query parameter|max_memory"):
        tuner.device_map("m", server=served, hardware=SPEC, max_memory={0: "1GiB", "cuda:0": "2GiB"})
    with pytest.raises(tuner.RunNotFoundError, match="no run has id 99"):
        tuner.fetch_map(99, server=served)


class _OtherServer(http.server.BaseHTTPRequestHandler):
    """A server that is no tuner service: the same answer to every path."""

    status = 200
    kind = "text/html"
    body = b"<html><body>It works!</body></html>"

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", self.kind)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "kind", "body", "answered"),
    [
        (200, "text/html", b"<html>It works!</html>", "/v1/best with text/html, not JSON"),
        (
            404,
            "text/html",
            b"<html>File not found</html>",
            "/v1/best with 404 Not Found, not the service's error",
        ),
        (200, "application/json", b'{"detail": "Not Found"}', "/v1/best with JSON that is no device map"),
        (200, "application/json", b"[1, 2]", "/v1/runs with JSON that lists no runs"),
    ],
)
def test_a_server_that_is_no_tuner_service_is_said_to_be_none(
    status: int, kind: str, body: bytes, answered: str
) -> None:
    """A web server, another service or a proxy's page at the URL is not read as a map, or as a
    run that is not there."""
    handler = type("Answer", (_OtherServer,), {"status": status, "kind": kind, "body": body})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{web.server_address[1]}"
        try:
            with pytest.raises(tuner.StorageError) as refused:
                if answered.startswith("/v1/runs"):
                    tuner.fetch_map("latest", server=url)
                else:
                    tuner.device_map("m", server=url, hardware=SPEC)
        finally:
            web.shutdown()
    assert str(refused.value) == f"{url} answered {answered}: is it a tuner serve?"


def test_the_map_of_an_unfinished_run_comes_with_a_warning_that_it_is_the_best_so_far(
    served: str, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store(db) as store:
        complete = store.get_run(1)
        assert complete.winner is not None
        stopped = store.create_run(
            dataclasses.replace(complete, study_name="tuner-stopped", status=RunStatus.RUNNING)
        )
        store.finish_run(
            stopped, status=RunStatus.INTERRUPTED, winner=complete.winner, trials=48, phase_seconds={}
        )
    told = (
        f"{served}: run {stopped} was interrupted after 48 trials: its map is the best so far; "
        f"tuner optimize --resume {stopped} finishes it"
    )

    with pytest.warns(tuner.UnfinishedRunWarning) as warned:
        document = tuner.fetch_map(stopped, server=served)
    assert document == complete.winner.device_map.to_hf()
    assert [str(warning.message) for warning in warned] == [told]
    assert warned[0].filename == __file__  # blamed on the caller's line
    code, out, err = run(["export", str(stopped), "--server", served], capsys)
    assert code == 0 and json.loads(out) == document
    assert err.strip() == f"warning: {told}"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete run's map is its answer: no warning
        assert tuner.fetch_map(1, server=served) == document


def test_exporting_a_failed_latest_run_from_a_service_names_the_newest_complete_one(
    served: str, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store(db) as store:
        complete = store.get_run(2)
        failed = store.create_run(dataclasses.replace(complete, study_name="tuner-failed", winner=None))
        store.fail_run(failed, "no such model folder: ./nope")

    code, out, err = run(["export", "latest", "--server", served], capsys)
    assert code != 0 and not out
    assert err.strip() == (
        f"error: {served}: run {failed} has no map (failed: no such model folder: ./nope); "
        "the newest complete run is 2"
    )


def test_from_pretrained_loads_the_map_a_service_holds_for_this_machines_spec(
    served: str,
    db: str,
    this_machine: HardwareProfile,
    store_this_machine: Callable[[str], str],
    weights_folder: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    spec = tmp_path / "here.json"
    tuner.write_spec(this_machine, spec)
    folder = weights_folder("llama")
    half = sum(f.stat().st_size for f in folder.glob("*.safetensors")) // 2
    asked: dict[str, Any] = {"hardware": str(spec), "seq": 8, "new_tokens": 2, "max_memory": {"cpu": half}}
    tuned = tuner.optimize(folder, trials=3, db=db, **asked)
    assert tuned.winner is not None and "disk" in tuned.winner.device_map.to_hf().values()

    loaded = tuner.from_pretrained(folder, server=served, **asked)
    assert dict(loaded.hf_device_map) == tuned.winner.device_map.to_hf()
    assert loaded.dtype == torch.float32  # the checkpoint's, as tuned
    named = tuner.from_pretrained(
        folder, server=served, dtype=torch.float32, **asked
    )  # as transformers takes it
    assert dict(named.hf_device_map) == dict(loaded.hf_device_map) and named.dtype == torch.float32
    # no dtype asked matches the newest run of any: loaded in the dtype that run was planned in,
    # not the checkpoint's float32 (twice the bytes its limits were planned for)
    tuner.optimize(folder, trials=3, db=db, dtype="bfloat16", **asked)
    time.sleep(BEST_MAX_AGE)  # the service replays its last answer to the same ask for this long
    assert tuner.from_pretrained(folder, server=served, **asked).dtype == torch.bfloat16
    with pytest.raises(tuner.ConstraintError, match="server: trials does not apply"):
        tuner.from_pretrained(folder, server=served, trials=3, **asked)
    # a run tuned on the service's own machine is named as device_map names it
    store_this_machine(db)
    here = tuner.optimize(folder, trials=3, db=db, **{**asked, "hardware": None})
    assert here.hardware_name == tuner.THIS_MACHINE and here.winner is not None
    loaded_here = tuner.from_pretrained(folder, server=served, **{**asked, "hardware": tuner.THIS_MACHINE})
    assert dict(loaded_here.hf_device_map) == here.winner.device_map.to_hf()


def test_a_map_fetched_with_its_limits_names_gpus_as_accelerate_takes_them(
    served: str, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from accelerate.utils import get_max_memory

    fetched = tuner.fetch_map(2, server=served, with_max_memory=True)
    written = json.loads(run(["export", "2", "--with-max-memory", "--db", db], capsys)[1])
    assert fetched["device_map"] == written["device_map"]
    assert 0 in fetched["max_memory"] and "0" in written["max_memory"]  # JSON sends the text
    assert {str(key): size for key, size in fetched["max_memory"].items()} == written["max_memory"]
    assert get_max_memory(fetched["max_memory"]) == fetched["max_memory"]
    assert fetched["dtype"] == written["dtype"] == tuner.get_run(2, db=db).workload.dtype
