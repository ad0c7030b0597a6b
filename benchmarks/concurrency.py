"""Several `tuner optimize` on one database: 8 processes started at once against the same 8 run one
after another, on a SQLite file and on PostgreSQL, each on a fresh database.

Two batches per backend: 8 different workloads (8 runs, each searched by its own process) and 8
identical requests (one run: the later processes join its search or reuse it). Each batch is
timed wall-clock from the first start to the last exit, and the runs' own search phase is read
back from the database (the mean per run: how much the shared database slows each search). The
modes are interleaved round by round, so that a busy machine slows all alike. Planning only (a
shipped spec), so each process spends its time on imports, the database and the search.

    python -m benchmarks.concurrency [--rounds 2] [--trials 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import transformers

from benchmarks.common import machine
from benchmarks.common import write_result
from storage import Store
from tuner.core.domain import RunStatus

PROCESSES = 8
#: The server the `postgres` tests use; each batch gets a database of its own next to `test`.
POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
#: One compute thread per process: eight of them share the machine's cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Batch:
    wall_s: float
    failed: int
    runs: int
    complete: int
    search_s: float  # mean search phase of a run


def tiny_llama(folder: Path) -> None:
    transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=256,
        architectures=["LlamaForCausalLM"],
    ).save_pretrained(folder)  # fmt: skip


def command(model: Path, db: str, seq: int, trials: int) -> list[str]:
    return [
        sys.executable, "-m", "tuner", "optimize", str(model), "--hardware", "1xA10G-24GB", "--seq", str(seq),
        "--new-tokens", "2", "--trials", str(trials), "--db", db, "--json",
    ]  # fmt: skip


def sqlite_database(work: Path) -> tuple[str, Callable[[], None]]:
    return f"sqlite:///{work / f'{uuid.uuid4().hex[:8]}.db'}", lambda: None


def postgres_database(work: Path) -> tuple[str, Callable[[], None]]:
    import psycopg

    name = f"tuner_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

    return POSTGRES_URL.format(name=name), drop


def batch(model: Path, db: str, seqs: list[int], trials: int, *, at_once: bool) -> Batch:
    """The optimizes of `seqs` on `db`, all started at once or one after another."""
    begin = time.perf_counter()
    codes = []
    if at_once:
        processes = [
            subprocess.Popen(
                command(model, db, seq, trials), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for seq in seqs
        ]
        codes = [process.wait() for process in processes]
    else:
        for seq in seqs:
            done = subprocess.run(command(model, db, seq, trials), env=ENV, capture_output=True, check=False)
            codes.append(done.returncode)
    wall = time.perf_counter() - begin
    with Store(db) as store:
        runs = store.list_runs(limit=100)
    searches = [run.phase_seconds.get("search", 0.0) for run in runs]
    return Batch(
        wall_s=wall,
        failed=sum(1 for code in codes if code != 0),
        runs=len(runs),
        complete=sum(1 for run in runs if run.status is RunStatus.COMPLETE),
        search_s=statistics.mean(searches) if searches else 0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="tuner-concurrency-"))
    model = work / "tiny-llama"
    tiny_llama(model)
    backends: dict[str, Callable[[Path], tuple[str, Callable[[], None]]]] = {"sqlite": sqlite_database}
    try:
        postgres_database(work)[1]()
        backends["postgresql"] = postgres_database
    except Exception as exc:  # no server: SQLite alone
        print(f"PostgreSQL skipped: {str(exc).strip().splitlines()[0]}")
    workloads = {
        "8 different": list(range(8, 8 + PROCESSES)),
        "8 identical": [8] * PROCESSES,
    }
    results: dict[tuple[str, str, bool], list[Batch]] = {}
    log: list[str] = []
    for round_ in range(args.rounds):
        for backend, make in backends.items():
            for name, seqs in workloads.items():
                for at_once in (True, False):
                    db, drop = make(work)
                    try:
                        found = batch(model, db, seqs, args.trials, at_once=at_once)
                    finally:
                        drop()
                    results.setdefault((backend, name, at_once), []).append(found)
                    how = "at once" if at_once else "in turn"
                    load = os.getloadavg()[0]
                    log.append(f"round {round_ + 1} {backend:10} {name} {how:7} {found.wall_s:6.1f} s wall, "
                               f"{found.failed} failed, {found.complete}/{found.runs} runs complete, "
                               f"search {found.search_s:.2f} s per run, load {load:.1f}")  # fmt: skip
                    print(log[-1], flush=True)

    load = os.getloadavg()[0]
    lines = [
        "# Concurrent optimizes on one database",
        "",
        f"`python -m benchmarks.concurrency --rounds {args.rounds} --trials {args.trials}`: {PROCESSES} "
        f"`tuner optimize` processes (tiny Llama, `--hardware 1xA10G-24GB`, {args.trials} trials), "
        "started at once or one after another, each batch on a fresh database. Wall time from the first "
        "start to the last exit, median over the rounds; search: the mean search phase of a run as stored.",
        "",
        f"Machine: {machine()}, {os.cpu_count()} cores; load average {load_before:.2f} before, "
        f"{load:.2f} at the end.",
        "",
        "| database | requests | at once | one after another | speed-up | failed | runs complete |"
        " search per run, at once / in turn |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend in backends:
        for name in workloads:
            together, apart = results[(backend, name, True)], results[(backend, name, False)]
            wall_together = statistics.median(b.wall_s for b in together)
            wall_apart = statistics.median(b.wall_s for b in apart)
            failed = sum(b.failed for b in together + apart)
            complete = f"{min(b.complete for b in together)}/{max(b.runs for b in together)}"
            search = (
                f"{statistics.median(b.search_s for b in together):.2f} s / "
                f"{statistics.median(b.search_s for b in apart):.2f} s"
            )
            lines.append(
                f"| {backend} | {name} | {wall_together:.1f} s | {wall_apart:.1f} s | "
                f"{wall_apart / wall_together:.2f}x | {failed} | {complete} | {search} |"
            )
    lines += ["", "Every batch (load: the 1-minute load average as it ended):", "", "```", *log, "```"]
    print("\n".join(lines))
    print(f"written to {write_result('concurrency', lines)}")


if __name__ == "__main__":
    main()
