"""`GET /v1/best` under load: 64 clients on this machine, each asking again as soon as it has its
answer (keep-alive connections), for a bounded time, against `tuner serve` as a process; beside
it, what a machine without the service pays for the same map: `tuner export` as a process.

Target (issue 13): p99 under 20 ms with 64 concurrent clients. The clients run in one process of
their own (asyncio, raw HTTP/1.1), on the same cores as the server: the load average before and
after is printed and written with the figures, and a timing taken on a machine busier than its
cores is marked as loaded.

    python -m benchmarks.serve_speed [--clients 64] [--seconds 30] [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import transformers

import tuner
from benchmarks.common import machine
from benchmarks.common import write_result
from tuner.service.app import BEST_MAX_AGE

SPEC = "1xA10G-24GB"
REQUEST = {"hardware": SPEC, "seq": 64, "new_tokens": 8, "max_memory": {0: "1GiB"}}
#: Rounds of `tuner export` as a process.
EXPORT_ROUNDS = 5


def tiny_llama(folder: Path) -> None:
    config = transformers.LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, vocab_size=1000
    )
    config.save_pretrained(folder)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(db: str, port: int) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if key != "TUNER_API_TOKEN"}
    args = [sys.executable, "-m", "tuner", "serve", "--port", str(port), "--db", db]
    process = subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("tuner serve did not start") from None
            time.sleep(0.2)


async def client(port: int, target: bytes, stop_at: float, latencies: list[float], errors: list[str]) -> None:
    """One client: a keep-alive connection, a request as soon as the last answer is read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
    try:
        while time.perf_counter() < stop_at:
            begin = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - begin)
            if b" 200 " not in status:
                errors.append(status.decode(errors="replace").strip())
    finally:
        writer.close()


async def load(
    port: int, target: bytes, clients: int, seconds: float
) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    begin = time.perf_counter()
    stop_at = begin + seconds
    await asyncio.gather(*(client(port, target, stop_at, latencies, errors) for _ in range(clients)))
    return latencies, errors, time.perf_counter() - begin


def uvicorn_stack() -> str:
    """The HTTP parser and event loop uvicorn picks ("auto"): the fast ones when importable."""
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"{http} and {loop}"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def export_seconds(run_id: int, db: str) -> list[float]:
    times = []
    for _ in range(EXPORT_ROUNDS):
        begin = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "tuner", "export", str(run_id), "--db", db],
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - begin)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the load lasts (at most 120)")
    parser.add_argument("--db", help="a database URL (default: a new SQLite file)")
    args = parser.parse_args()
    seconds = min(max(args.seconds, 1.0), 120.0)  # bounded, whatever is asked

    work = Path(tempfile.mkdtemp(prefix="tuner-serve-speed-"))
    model = work / "tiny-llama"
    tiny_llama(model)
    db = args.db or f"sqlite:///{work / 'tuner.db'}"
    run = tuner.optimize(str(model), db=db, trials=20, **REQUEST)  # type: ignore[arg-type]
    query = {"model": str(model), "hardware": SPEC, "seq": 64, "new_tokens": 8, "max_memory": "0=1GiB"}
    target = ("/v1/best?" + urlencode(query)).encode()

    port = free_port()
    server = start_server(db, port)
    try:
        asyncio.run(load(port, target, 4, 2.0))  # warm: connections, caches, the first queries
        load_before = os.getloadavg()
        alone, _, alone_wall = asyncio.run(load(port, target, 1, min(seconds, 5.0)))
        latencies, errors, wall = asyncio.run(load(port, target, args.clients, seconds))
        load_after = os.getloadavg()
    finally:
        server.terminate()
        server.wait(timeout=30)
    exports = export_seconds(run.id, db)

    cores = os.cpu_count() or 1
    loaded = max(load_before[0], load_after[0]) > cores
    backend = db.partition(":")[0]
    lines = [
        "# GET /v1/best under load, beside `tuner export` as a process",
        "",
        f"`tuner serve` (uvicorn on {uvicorn_stack()}, one process, access log off; a question asked "
        f"again within {BEST_MAX_AGE:g} s is answered from the service's last answer) on {backend}; "
        f"{args.clients} clients "
        f"in one asyncio process, keep-alive, each asking again at once, for {seconds:.0f} s, after a "
        "2 s warm-up and one client alone; both on this machine's cores.",
        f"Machine: {machine()}, {cores} cores. Load average (1, 5, 15 min) before: "
        f"{', '.join(f'{x:.2f}' for x in load_before)}; after: {', '.join(f'{x:.2f}' for x in load_after)}"
        + (
            " - LOADED: other work shared the cores, the figures are slower than this machine's."
            if loaded
            else "."
        ),
        "",
        "| measure | value |",
        "|---|---|",
        f"| requests answered | {len(latencies)} ({len(errors)} not 200) |",
        f"| throughput | {len(latencies) / wall:.0f} requests/s |",
        f"| latency p50 | {percentile(latencies, 0.50) * 1e3:.1f} ms |",
        f"| latency p90 | {percentile(latencies, 0.90) * 1e3:.1f} ms |",
        f"| latency p99 | {percentile(latencies, 0.99) * 1e3:.1f} ms (target: under 20 ms) |",
        f"| latency max | {max(latencies) * 1e3:.1f} ms |",
        f"| one client alone ({min(seconds, 5.0):.0f} s): p50, p99 | "
        f"{percentile(alone, 0.50) * 1e3:.1f} ms, {percentile(alone, 0.99) * 1e3:.1f} ms "
        f"({len(alone) / alone_wall:.0f} requests/s) |",
        f"| `tuner export {run.id}` as a process, median of {EXPORT_ROUNDS} | "
        f"{statistics.median(exports):.2f} s ({min(exports):.2f}-{max(exports):.2f}) |",
        "",
        f"With {args.clients} closed-loop clients the latency is mostly the queue: a request waits for "
        f"the ones ahead of it on the server's one process, so p50 is about {args.clients} / throughput; "
        "one client alone shows what a request itself costs.",
    ]
    if errors:
        lines.append(f"First answer that was not 200: {errors[0]}")
    path = write_result("serve_speed", lines)
    print("\n".join(lines))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
