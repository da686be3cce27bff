"""A production-shaped deployment, measured in one run: postings straight to the primary vs
through PgBouncer (transaction pooling), and reports on a streaming standby while postings
run on the primary.

    python -m bench.deployment [--seconds 4] [--rounds 3] [--clients 16 64] [--pool-size 16]

It starts its own servers on free local ports (tests/servers.py: initdb, pg_basebackup -R,
pg_ctl, as the postgres OS user; PgBouncer from Debian's package), with PostgreSQL's
default durability (fsync, synchronous_commit on), and stops them at the end.

Postings (60% top-ups, 40% spends, random users of --users, through walletctl.core.posting,
each client a process with one connection opened as the CLI opens it):

- direct, prepared: walletctl's default on a direct connection (the posting statement is
  prepared once per connection);
- direct, unprepared: the same without server-side prepared statements, which is what
  transaction pooling requires: this row prices the setting alone;
- pgbouncer: through PgBouncer in transaction pooling, --pool-size server connections
  shared by all clients; walletctl detects the pooler and prepares nothing.

Reports during postings: --writers posting clients on the primary and --readers report
clients (a balance, then a 20-line statement, of a random user, as `walletctl balance` and
`walletctl audit USER --limit 20` read them) on the primary, then on the standby. A sampler
measures the standby's lag (walletctl.replica) every 50 ms meanwhile. Both servers share
this machine's CPU, so moving the reports to the standby frees no CPU here; on two machines
it would.

Each configuration runs --rounds times on a fresh copy of one template database; medians.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from bench.common import Timing, Worker, markdown_table, median, print_table, run_groups
from tests import servers
from walletctl import database, migrate, replica
from walletctl.core import balances, history, posting
from walletctl.core.history import StatementFilter

START_BALANCE = 1_000_000
OPERATOR = "bench_operator"
READER = "bench_finance"

# PostgreSQL's defaults for durability; enough connections for 64 direct clients.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "hot_standby_feedback": "on",
    "wal_receiver_status_interval": "1s",
}


@dataclass(frozen=True)
class Deployment:
    replicated: servers.ReplicatedServers
    bouncer: servers.PgBouncer

    def primary(self, database_name: str, user: str = OPERATOR) -> str:
        return self.replicated.primary.url(database_name, user)

    def standby(self, database_name: str, user: str = READER) -> str:
        return self.replicated.standby.url(database_name, user)

    def pooled(self, database_name: str, user: str = OPERATOR) -> str:
        return self.bouncer.url(database_name, user)


def posting_worker(url: str, prepared: str, users: int) -> Worker:
    def worker(index: int, deadline: float) -> tuple[int, list[float]]:
        rng = random.Random(index * 7919 + users)
        latencies: list[float] = []
        conn = database.open_connection(url, prepared_statements=prepared)  # type: ignore[arg-type]
        with conn:
            while time.monotonic() < deadline:
                kind = "topup" if rng.random() < 0.6 else "spend"
                amount = rng.randint(1, 100) if kind == "topup" else rng.randint(1, 50)
                key = f"{index}-{len(latencies)}-{uuid.uuid4().hex}"
                began = time.perf_counter()
                posting.post(
                    conn,
                    kind,  # type: ignore[arg-type]
                    f"u{rng.randint(1, users)}",
                    amount,
                    asset="GOLD",
                    idempotency_key=key,
                )
                latencies.append(time.perf_counter() - began)
        return len(latencies), latencies

    return worker


def report_worker(url: str, users: int) -> Worker:
    def worker(index: int, deadline: float) -> tuple[int, list[float]]:
        rng = random.Random(index * 104729 + users)
        latencies: list[float] = []
        with database.open_connection(url) as conn:
            while time.monotonic() < deadline:
                user = f"u{rng.randint(1, users)}"
                began = time.perf_counter()
                balances.balances(conn, user)
                list(history.statement(conn, user, StatementFilter(limit=20)))
                latencies.append(time.perf_counter() - began)
        return len(latencies), latencies

    return worker


class LagSampler:
    """The standby's lag as walletctl measures it, every 50 ms, in a thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lags: list[float] = []
        self.unknown = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with database.open_connection(self.url) as conn:
            while not self._stop.is_set():
                lag = replica.measure(conn, settle_seconds=0).lag_seconds
                if lag is None:
                    self.unknown += 1
                else:
                    self.lags.append(lag)
                time.sleep(0.05)


def build_template(deployment: Deployment, users: int) -> str:
    name = "bench_template"
    admin_url = deployment.replicated.primary.url()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = deployment.replicated.primary.url(name)
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT walletctl_add_asset('GOLD', 'Gold Coins')")
        for role, kind in ((OPERATOR, "operator"), (READER, "finance")):
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(f"CREATE ROLE {role} LOGIN")
            conn.execute(f"GRANT walletctl_{kind} TO {role}")
        conn.execute(
            "SELECT walletctl_post('topup', 'u' || g, 'GOLD', %s, 'fund-' || g, NULL, 'bench') "
            "FROM generate_series(1, %s) g",
            (START_BALANCE, users),
        )
        conn.execute("VACUUM ANALYZE")
    return name


class Copies:
    """Fresh copies of the template on the primary (replicated to the standby)."""

    def __init__(self, deployment: Deployment, template: str) -> None:
        self.deployment = deployment
        self.template = template

    def __call__(self) -> str:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.deployment.replicated.primary.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        servers.wait_for_replay(
            self.deployment.replicated.primary.url(), self.deployment.replicated.standby.url()
        )
        return name

    def drop(self, name: str) -> None:
        with psycopg.connect(self.deployment.replicated.primary.url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


POSTING_DESIGNS = ("direct, prepared", "direct, unprepared", "pgbouncer")


def posting_url(deployment: Deployment, design: str, name: str) -> tuple[str, str]:
    if design == "pgbouncer":
        return deployment.pooled(name), "auto"
    return deployment.primary(name), "on" if design == "direct, prepared" else "off"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="medians of this many")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--pool-size", type=int, default=16, help="PgBouncer's default_pool_size")
    parser.add_argument("--writers", type=int, default=16, help="posting clients with reports")
    parser.add_argument("--readers", type=int, default=4, help="report clients")
    args = parser.parse_args()

    print("starting a primary, its standby and PgBouncer...", flush=True)
    with servers.primary_and_standby(SERVER_SETTINGS) as replicated:
        bouncer = servers.start_pgbouncer(
            "127.0.0.1",
            replicated.primary.port,
            {
                "pool_mode": "transaction",
                "default_pool_size": str(args.pool_size),
                "max_client_conn": "500",
            },
        )
        try:
            run(Deployment(replicated, bouncer), args)
        finally:
            bouncer.stop()


def run(deployment: Deployment, args: Any) -> None:
    template = build_template(deployment, args.users)
    copies = Copies(deployment, template)
    postings: dict[tuple[int, str], list[Timing]] = {}
    mixed: dict[str, list[tuple[Timing, Timing]]] = {}
    lags: dict[str, list[float]] = {}
    for round_number in range(1, args.rounds + 1):
        # Rounds outside: a noisy minute hurts every design alike.
        for clients in args.clients:
            for design in POSTING_DESIGNS:
                name = copies()
                try:
                    url, prepared = posting_url(deployment, design, name)
                    (timing,) = run_groups(
                        [(posting_worker(url, prepared, args.users), clients)], args.seconds
                    )
                finally:
                    copies.drop(name)
                postings.setdefault((clients, design), []).append(timing)
                print(
                    f"  round {round_number} {clients:3} clients {design:19} "
                    f"{timing.throughput:8.0f} postings/s",
                    flush=True,
                )
        for where in ("primary", "standby"):
            name = copies()
            try:
                reports_url = (
                    deployment.primary(name, READER)
                    if where == "primary"
                    else deployment.standby(name)
                )
                with LagSampler(deployment.standby(name)) as sampler:
                    writes, reads = run_groups(
                        [
                            (
                                posting_worker(deployment.primary(name), "on", args.users),
                                args.writers,
                            ),
                            (report_worker(reports_url, args.users), args.readers),
                        ],
                        args.seconds,
                    )
            finally:
                copies.drop(name)
            mixed.setdefault(where, []).append((writes, reads))
            lags.setdefault(where, []).extend(sampler.lags)
            print(
                f"  round {round_number} reports on the {where:7} {writes.throughput:8.0f} "
                f"postings/s {reads.throughput:7.0f} reports/s, standby lag max "
                f"{max(sampler.lags, default=0):.3f} s"
                + (f" ({sampler.unknown} samples unknown)" if sampler.unknown else ""),
                flush=True,
            )
    print_results(args, postings, mixed, lags)


def _pooled(timings: list[Timing]) -> tuple[float, Timing]:
    pooled = Timing(0, 1, [latency for timing in timings for latency in timing.latencies])
    return median([timing.throughput for timing in timings]), pooled


def print_results(
    args: Any,
    postings: dict[tuple[int, str], list[Timing]],
    mixed: dict[str, list[tuple[Timing, Timing]]],
    lags: dict[str, list[float]],
) -> None:
    columns = ["clients", "design", "postings/s", "p50 ms", "p99 ms", "vs direct, prepared"]
    rows = []
    for (clients, design), timings in postings.items():
        throughput, pooled = _pooled(timings)
        base = _pooled(postings[(clients, "direct, prepared")])[0]
        rows.append(
            [
                clients,
                design,
                f"{throughput:,.0f}",
                f"{pooled.p50_ms:.2f}",
                f"{pooled.p99_ms:.2f}",
                f"{throughput / base:.2f}x",
            ]
        )
    title = (
        f"Postings: direct vs PgBouncer (transaction pooling, pool {args.pool_size}), median "
        f"of {args.rounds} rounds of {args.seconds:g} s"
    )
    print_table(title, columns, rows)
    print(markdown_table(columns, rows))

    columns = [
        "reports on",
        "postings/s",
        "posting p99 ms",
        "reports/s",
        "report p50 ms",
        "report p99 ms",
        "standby lag p50 / max s",
    ]
    rows = []
    for where, runs in mixed.items():
        writes, write_latencies = _pooled([writes for writes, _ in runs])
        reads, read_latencies = _pooled([reads for _, reads in runs])
        seen = lags[where]
        rows.append(
            [
                where,
                f"{writes:,.0f}",
                f"{write_latencies.p99_ms:.2f}",
                f"{reads:,.0f}",
                f"{read_latencies.p50_ms:.2f}",
                f"{read_latencies.p99_ms:.2f}",
                f"{statistics.median(seen):.3f} / {max(seen):.3f}" if seen else "n/a",
            ]
        )
    title = (
        f"{args.writers} posting clients on the primary with {args.readers} report clients "
        f"(balance + 20-line statement), median of {args.rounds} rounds"
    )
    print_table(title, columns, rows)
    print(markdown_table(columns, rows))


if __name__ == "__main__":
    main()
