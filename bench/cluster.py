"""Postings through a PL/Proxy proxy with 1, 2 and 4 partitions against direct postings to
one database, side by side in one run.

    python -m bench.cluster [--seconds 4] [--rounds 2] [--users 2000] [--clients 1 4 16]

Every design is built on the server of WALLETCTL_BENCH_DATABASE_URL (all its databases on
one PostgreSQL, as the CI's tests build a cluster): `direct` is one walletctl database;
`proxy-N` is a proxy database and N partitions made by `walletctl cluster create`; the
last design is proxy-1 with walletctl_post's search_path not pinned, as before it was. Each
starts with --users users funded with 1,000,000 GOLD, and the clients (processes, each one
connection, as a login role that is only a walletctl_operator) send the same text,
"SELECT * FROM walletctl_post(...)", prepared: 60% top-ups, 40% spends, random users.

Reported per design and client count: postings/s (median of --rounds rounds, designs
alternated within each round), p50/p99 latency, the ratio to `direct`, and the CPU time of
the backends the clients are connected to, per posting: for `direct` that is the whole
posting; for a proxy it is the proxy's own work (PL/Proxy's routing, the call sent on and
its result received), the proxy's cost per posting. Client processes share the machine's
two cores with every server process, so absolute rates say little; read the ratios.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg

from bench.common import Timing, markdown_table, median, print_table, run_clients, server_url
from bench.common import with_database as database_url
from bench.posting import OPERATOR_ROLE, START_BALANCE, as_operator
from bench.server_cpu import backend_cpu_seconds
from walletctl import migrate
from walletctl.cluster import admin
from walletctl.core import posting

PARTITION_COUNTS = (1, 2, 4)


@contextmanager
def _databases(count: int) -> Iterator[list[str]]:
    prefix = f"walletctl_bench_cluster_{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}_{n}" for n in range(count)]
    with psycopg.connect(server_url(), autocommit=True) as su:
        for name in names:
            su.execute(f'CREATE DATABASE "{name}"')
    try:
        yield [database_url(server_url(), name) for name in names]
    finally:
        with psycopg.connect(server_url(), autocommit=True) as su:
            for name in names:
                su.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _operator_role(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (OPERATOR_ROLE,)
        ).fetchone():
            conn.execute(f"CREATE ROLE {OPERATOR_ROLE} LOGIN")
        conn.execute(f"GRANT walletctl_operator TO {OPERATOR_ROLE}")


def _fund(url: str, users: int) -> None:
    """GOLD, and every user funded: through the proxy when ``url`` is one (one call per
    user, routed), so each partition gets its own users."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT * FROM walletctl_add_asset('GOLD', 'Gold Coins')")
        conn.execute(
            "SELECT (walletctl_post('topup', 'u' || g, 'GOLD', %s, 'fund-' || g, NULL, 'bench'))"
            ".transaction_id FROM generate_series(1, %s) g",
            (START_BALANCE, users),
        )


@contextmanager
def direct(users: int) -> Iterator[str]:
    with _databases(1) as (url,):
        migrate.upgrade(url)
        _operator_role(url)
        _fund(url, users)
        _vacuum([url])
        yield url


@contextmanager
def proxied(partitions: int, users: int) -> Iterator[str]:
    with _databases(partitions + 1) as urls:
        proxy, parts = urls[0], urls[1:]
        admin.create(proxy, parts)
        _operator_role(proxy)
        _fund(proxy, users)
        _vacuum(parts)
        yield proxy


@contextmanager
def proxied_unpinned(users: int) -> Iterator[str]:
    """proxy-1 as it was before its functions pinned their search_path: the cost of the
    pin (a function-level setting is saved and restored at every call)."""
    with proxied(1, users) as proxy:
        with psycopg.connect(proxy, autocommit=True) as conn:
            conn.execute(
                "ALTER FUNCTION walletctl_post(text, text, text, bigint, text, text, text) "
                "RESET search_path"
            )
        yield proxy


def _vacuum(urls: list[str]) -> None:
    for url in urls:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")


def make_worker(url: str, users: int) -> Callable[[int, float], tuple[int, list[float], float]]:
    def worker(index: int, deadline: float) -> tuple[int, list[float], float]:
        rng = random.Random(index * 7919 + users)
        latencies: list[float] = []
        with psycopg.connect(url, autocommit=True) as conn:
            cpu_before = backend_cpu_seconds(conn)
            while time.monotonic() < deadline:
                kind = "topup" if rng.random() < 0.6 else "spend"
                amount = rng.randint(1, 100) if kind == "topup" else rng.randint(1, 50)
                key = f"b-{index}-{len(latencies)}-{rng.getrandbits(48)}"
                began = time.perf_counter()
                conn.execute(
                    posting.POST_SQL,
                    (kind, f"u{rng.randint(1, users)}", "GOLD", amount, key, None, "bench"),
                    prepare=True,
                ).fetchone()
                latencies.append(time.perf_counter() - began)
            cpu = backend_cpu_seconds(conn) - cpu_before
        return len(latencies), latencies, cpu

    return worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()

    with ExitStack() as stack:
        designs = {"direct": as_operator(stack.enter_context(direct(args.users)))}
        for count in PARTITION_COUNTS:
            designs[f"proxy-{count}"] = as_operator(stack.enter_context(proxied(count, args.users)))
        designs["proxy-1, search_path not pinned (before)"] = as_operator(
            stack.enter_context(proxied_unpinned(args.users))
        )
        timings: dict[tuple[str, int], list[Timing]] = {}
        for clients in args.clients:
            for _round in range(args.rounds):
                for design, url in designs.items():
                    timing = run_clients(make_worker(url, args.users), clients, args.seconds)
                    timings.setdefault((design, clients), []).append(timing)

    columns = [
        "design", "clients", "postings/s", "p50 ms", "p99 ms", "vs direct",
        "backend CPU µs/posting", "rounds (postings/s)",
    ]  # fmt: skip
    rows: list[list[Any]] = []
    for clients in args.clients:
        base = median([t.throughput for t in timings[("direct", clients)]])
        for design in designs:
            runs = timings[(design, clients)]
            best = sorted(runs, key=lambda t: t.throughput)[len(runs) // 2]
            rate = median([t.throughput for t in runs])
            cpu = median([t.server_cpu_seconds / t.operations * 1e6 for t in runs if t.operations])
            rows.append(
                [
                    design,
                    clients,
                    f"{rate:,.0f}",
                    f"{best.p50_ms:.2f}",
                    f"{best.p99_ms:.2f}",
                    f"{rate / base:.2f}x",
                    f"{cpu:,.0f}",
                    ", ".join(f"{t.throughput:,.0f}" for t in runs),
                ]
            )
    title = (
        f"Postings through PL/Proxy vs direct ({args.users} users, median of {args.rounds} "
        f"rounds of {args.seconds:g} s)"
    )
    print_table(title, columns, rows)
    print(markdown_table(columns, rows))


if __name__ == "__main__":
    main()
