"""What the benchmarks share: a scratch database, parallel client processes, statistics and
the printed table."""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    return os.environ.get("WALLETCTL_BENCH_DATABASE_URL", DEFAULT_SERVER)


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextmanager
def scratch_database(template: str | None = None, prefix: str = "walletctl_bench") -> Iterator[str]:
    """A new database (optionally a copy of ``template``), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url(), autocommit=True) as admin:
        if template:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        else:
            admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url(), name)
    finally:
        with psycopg.connect(server_url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class Timing:
    operations: int
    seconds: float
    latencies: Sequence[float]
    server_cpu_seconds: float = 0.0
    """CPU time of the clients' server backends, for workers that report it."""

    @property
    def throughput(self) -> float:
        return self.operations / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def p50_ms(self) -> float:
        return self.percentile(0.50) * 1000

    @property
    def p99_ms(self) -> float:
        return self.percentile(0.99) * 1000


Worker = Callable[[int, float], tuple[Any, ...]]
"""worker(index, deadline) -> (operations, latencies[, server CPU seconds]); runs in its own
process."""


def _run_worker(worker: Worker, index: int, barrier: Any, start_at: Any, results: Any) -> None:
    barrier.wait()
    count, latencies, *cpu = worker(index, start_at.value)
    results.put((index, count, latencies, time.monotonic(), cpu[0] if cpu else 0.0))


def run_groups(groups: Sequence[tuple[Worker, int]], seconds: float) -> list[Timing]:
    """Run every group's ``count`` processes of its worker, all together, for ``seconds``;
    one Timing per group (postings and reports side by side, say)."""
    context = multiprocessing.get_context("fork")
    total = sum(count for _, count in groups)
    barrier = context.Barrier(total + 1)
    start_at = context.Value("d", 0.0)
    results = context.Queue()
    group_of = [group for group, (_, count) in enumerate(groups) for _ in range(count)]
    processes = [
        context.Process(
            target=_run_worker, args=(groups[group][0], index, barrier, start_at, results)
        )
        for index, group in enumerate(group_of)
    ]
    for process in processes:
        process.start()
    # Workers connect before the barrier; the clock starts when all are ready. Each stops
    # at the deadline; the run lasts until the last one's last operation ends.
    time.sleep(0.5)
    begin = time.monotonic()
    start_at.value = begin + seconds
    barrier.wait()
    outcomes = [results.get(timeout=seconds + 120) for _ in processes]
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"a benchmark client failed (exit {process.exitcode})")
    timings = []
    for group in range(len(groups)):
        mine = [outcome for outcome in outcomes if group_of[outcome[0]] == group]
        timings.append(
            Timing(
                sum(outcome[1] for outcome in mine),
                max(outcome[3] for outcome in mine) - begin,
                [latency for outcome in mine for latency in outcome[2]],
                sum(outcome[4] for outcome in mine),
            )
        )
    return timings


def run_clients(worker: Worker, clients: int, seconds: float) -> Timing:
    """Run ``clients`` processes of ``worker`` together for ``seconds``; pool their timings."""
    return run_groups([(worker, clients)], seconds)[0]


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("design", "workload", "what") else "right"
        )
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    Console(width=160).print(table)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
