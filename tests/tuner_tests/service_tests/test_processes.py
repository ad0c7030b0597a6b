"""`tuner serve` and `tuner worker` as processes an operator starts and stops: the access log
prints each request, and the workers of `worker --concurrency` stop when the process that
started them dies, even by kill -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from storage import Store

#: How long any wait may take, however busy the machine.
WAIT_S = 120


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {WAIT_S} s"
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until_it_answers(address: str) -> None:
    """Until the service at `address` (``http://host:port/``) answers /healthz."""

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{address}healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_for(answers, f"answer from the service at {address}")


def test_serve_on_port_0_says_the_port_the_system_chose_and_logs_each_request_there(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    args = [sys.executable, "-m", "tuner", "serve", "--port", "0", "--access-log", "--db", db]
    server = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        said = server.stderr.readline()
        address = said.split(" on ")[1].split()[0]
        assert address.startswith("http://127.0.0.1:") and not address.endswith(":0/"), said
        wait_until_it_answers(address)
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=WAIT_S)
    assert '"GET /healthz HTTP/1.1" 200' in err


def _ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_serve_listens_on_the_ipv6_loopback_and_says_it_as_a_url(host: str, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    args = [sys.executable, "-m", "tuner", "serve", "--host", host, "--port", "0", "--db", db]
    env = {key: value for key, value in os.environ.items() if key != "TUNER_API_TOKEN"}
    server = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stderr is not None
        said = server.stderr.readline()
        address = said.split(" on ")[1].split()[0] if " on " in said else said
        assert address.startswith("http://[::1]:") and not address.endswith(":0/"), said
        wait_until_it_answers(address)
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=WAIT_S)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers through /proc")
def test_the_workers_of_concurrency_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'tuner.db'}"
    Store(db).close()  # an empty queue: the workers wait for runs
    args = [sys.executable, "-m", "tuner", "worker", "--concurrency", "2", "--poll", "0.1", "--db", db]
    parent = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        wait_for(lambda: len(children(parent.pid)) == 2, "two workers")
        workers = children(parent.pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=WAIT_S)
        wait_for(lambda: not any(alive(pid) for pid in workers), "end of the workers")
    finally:
        parent.kill()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        args = [
            sys.executable,
            "-m",
            "tuner",
            "serve",
            "--port",
            str(port),
            "--db",
            f"sqlite:///{tmp_path / 't.db'}",
        ]
        done = subprocess.run(args, capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
