"""Posting throughput: walletctl's core against the seed design, side by side in one run.

    python -m bench.posting [--seconds 5] [--users 10000]

Designs, each on an identical copy of one template database:

- seed: the naive design the project started from, run faithfully: look the key up,
  SELECT ... FOR UPDATE the Treasury and the user in ascending id order, the balance as
  SUM over the user's ledger entries, insert the transaction and its two entries, commit.
  Plain tables with foreign keys, no triggers.
- core-0003: the core as it was before least privilege (schema revision 0003): functions
  running as the caller, who needs write privileges on the tables; no chain, sign,
  cached-balance or text checks in the database. Called as a superuser.
- core-0005: the core at schema revision 0005 (least privilege and the operator controls,
  before the hardening of 0006, which reads the controls after the balance lock and
  checks a request's key): what that hardening costs. Called as an operator.
- core: today's walletctl_post (SECURITY DEFINER, the rules of walletctl/sql/rules.sql),
  called as a login role that is only a member of walletctl_operator, as a deployment does.
- core+fk: today's core with foreign keys from transactions and ledger_entries to accounts
  and asset_types added back, to show what leaving them out buys.

Both core variants send the same text, "SELECT * FROM walletctl_post(...)", prepared,
from the same client loop, so their difference is the server's. Each run also reports the
server's CPU time per posting (bench/server_cpu.py), which the clients sharing the two
cores cannot distort.

Workloads: "spread" picks a random user of --users for every posting; "hot" posts to one
user. Both: 60% top-ups of 1-100, 40% spends of 1-50 (users start with 1,000,000, so spends
succeed). Then pgbench runs walletctl_post with the same mix at 1 client: the ratio of its
throughput to the core's at 1 client is the Python client's overhead.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    Timing,
    markdown_table,
    median,
    print_table,
    run_clients,
    scratch_database,
    server_url,
)
from bench.server_cpu import backend_cpu_seconds
from walletctl import migrate
from walletctl.core import posting

START_BALANCE = 1_000_000

SEED_SCHEMA = """
CREATE SCHEMA seed;
CREATE TABLE seed.asset_types (id smallint PRIMARY KEY, code text NOT NULL UNIQUE);
CREATE TABLE seed.accounts (id bigint PRIMARY KEY, external_id text UNIQUE);
CREATE TABLE seed.transactions (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    account_id bigint NOT NULL REFERENCES seed.accounts,
    asset_id smallint NOT NULL REFERENCES seed.asset_types,
    amount bigint NOT NULL CHECK (amount > 0),
    idempotency_key text NOT NULL UNIQUE,
    reason text,
    actor text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE seed.ledger_entries (
    id bigserial PRIMARY KEY,
    transaction_id bigint NOT NULL REFERENCES seed.transactions,
    account_id bigint NOT NULL REFERENCES seed.accounts,
    asset_id smallint NOT NULL REFERENCES seed.asset_types,
    amount bigint NOT NULL CHECK (amount <> 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON seed.ledger_entries (account_id, asset_id);
INSERT INTO seed.asset_types VALUES (1, 'GOLD');
INSERT INTO seed.accounts VALUES (0, NULL);
"""

OPERATOR_ROLE = "walletctl_bench_operator"

SEED_USERS = """
INSERT INTO seed.accounts SELECT g, 'u' || g FROM generate_series(1, %(users)s) g;
INSERT INTO seed.transactions (kind, account_id, asset_id, amount, idempotency_key, actor)
SELECT 'topup', g, 1, %(start)s, 'fund-' || g, 'bench' FROM generate_series(1, %(users)s) g;
INSERT INTO seed.ledger_entries (transaction_id, account_id, asset_id, amount)
SELECT t.id, t.account_id, 1, t.amount FROM seed.transactions t
UNION ALL
SELECT t.id, 0, 1, -t.amount FROM seed.transactions t;
"""

CORE_FOREIGN_KEYS = """
ALTER TABLE transactions ADD FOREIGN KEY (account_id) REFERENCES accounts (id);
ALTER TABLE transactions ADD FOREIGN KEY (asset_id) REFERENCES asset_types (id);
ALTER TABLE ledger_entries ADD FOREIGN KEY (transaction_id) REFERENCES transactions (id);
ALTER TABLE ledger_entries ADD FOREIGN KEY (account_id) REFERENCES accounts (id);
ALTER TABLE ledger_entries ADD FOREIGN KEY (asset_id) REFERENCES asset_types (id);
"""

PGBENCH_SCRIPT = """
\\set user random(1, {users})
\\set pick random(1, 10)
\\set key random(1, 9000000000000000000)
\\if :pick <= 6
\\set amount random(1, 100)
SELECT * FROM walletctl_post('topup', 'u' || :user, 'GOLD', :amount, 'pgb-' || :key, NULL, 'bench');
\\else
\\set amount random(1, 50)
SELECT * FROM walletctl_post('spend', 'u' || :user, 'GOLD', :amount, 'pgb-' || :key, NULL, 'bench');
\\endif
"""


class InsufficientInSeed(Exception):
    pass


def seed_post(conn: psycopg.Connection[Any], kind: str, user: str, amount: int, key: str) -> int:
    """The seed design's posting, statement by statement."""
    with conn.transaction():
        found = conn.execute(
            "SELECT id FROM seed.transactions WHERE idempotency_key = %s", (key,), prepare=True
        ).fetchone()
        if found:
            return int(found[0])
        row = conn.execute(
            "SELECT id FROM seed.accounts WHERE external_id = %s", (user,), prepare=True
        ).fetchone()
        assert row is not None
        account = int(row[0])
        conn.execute(
            "SELECT id FROM seed.accounts WHERE id IN (0, %s) ORDER BY id FOR UPDATE",
            (account,),
            prepare=True,
        ).fetchall()
        balance_row = conn.execute(
            "SELECT coalesce(sum(amount), 0) FROM seed.ledger_entries "
            "WHERE account_id = %s AND asset_id = 1",
            (account,),
            prepare=True,
        ).fetchone()
        assert balance_row is not None
        delta = -amount if kind == "spend" else amount
        if int(balance_row[0]) + delta < 0:
            raise InsufficientInSeed
        txn_row = conn.execute(
            "INSERT INTO seed.transactions (kind, account_id, asset_id, amount, idempotency_key, "
            "actor) VALUES (%s, %s, 1, %s, %s, 'bench') RETURNING id",
            (kind, account, amount, key),
            prepare=True,
        ).fetchone()
        assert txn_row is not None
        conn.execute(
            "INSERT INTO seed.ledger_entries (transaction_id, account_id, asset_id, amount) "
            "VALUES (%s, %s, 1, %s), (%s, 0, 1, %s)",
            (txn_row[0], account, delta, txn_row[0], -delta),
            prepare=True,
        )
        return int(txn_row[0])


def build_template(users: int, revision: str = "head") -> str:
    """A template database at ``revision`` with the seed design's schema beside it, and
    --users funded users in each."""
    name = f"walletctl_bench_posting_template_{users}_{revision}"
    admin_url = server_url()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    from bench.common import with_database

    url = with_database(admin_url, name)
    migrate.upgrade(url, revision)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SEED_SCHEMA)
        for statement in SEED_USERS.strip().split(";\n"):
            conn.execute(statement, {"users": users, "start": START_BALANCE})
        if revision != "0003":
            conn.execute("SELECT walletctl_add_asset('GOLD', 'Gold Coins')")
            if not conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (OPERATOR_ROLE,)
            ).fetchone():
                conn.execute(f"CREATE ROLE {OPERATOR_ROLE} LOGIN")
            conn.execute(f"GRANT walletctl_operator TO {OPERATOR_ROLE}")
        else:
            conn.execute("INSERT INTO asset_types (code, name) VALUES ('GOLD', 'Gold Coins')")
        conn.execute(
            "SELECT walletctl_post('topup', 'u' || g, 'GOLD', %s, 'fund-' || g, NULL, 'bench') "
            "FROM generate_series(1, %s) g",
            (START_BALANCE, users),
        )
        conn.execute("VACUUM ANALYZE")
    return name


def as_operator(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{OPERATOR_ROLE}@{parts.netloc.rpartition('@')[2]}"))


def make_worker(
    url: str, design: str, users: int, hot: bool
) -> Callable[[int, float], tuple[int, list[float], float]]:
    def worker(index: int, deadline: float) -> tuple[int, list[float], float]:
        rng = random.Random(index * 7919 + users)
        latencies: list[float] = []
        with psycopg.connect(url, autocommit=(design != "seed")) as conn:
            cpu_before = backend_cpu_seconds(conn)
            while time.monotonic() < deadline:
                user = "u1" if hot else f"u{rng.randint(1, users)}"
                kind = "topup" if rng.random() < 0.6 else "spend"
                amount = rng.randint(1, 100) if kind == "topup" else rng.randint(1, 50)
                key = f"{design}-{index}-{len(latencies)}-{rng.getrandbits(48)}"
                began = time.perf_counter()
                if design == "seed":
                    seed_post(conn, kind, user, amount, key)
                else:
                    conn.execute(
                        posting.POST_SQL,
                        (kind, user, "GOLD", amount, key, None, "bench"),
                        prepare=True,
                    ).fetchone()
                latencies.append(time.perf_counter() - began)
            if design == "seed":
                conn.commit()  # the CPU read below is a query: leave no transaction open
            cpu = backend_cpu_seconds(conn) - cpu_before
        return len(latencies), latencies, cpu

    return worker


def run_pgbench(url: str, users: int, seconds: float) -> float | None:
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        print("pgbench not found: skipping the client-overhead comparison")
        return None
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "post.sql"
        script.write_text(PGBENCH_SCRIPT.format(users=users))
        result = subprocess.run(
            [
                pgbench,
                "-n",
                "-M",
                "prepared",
                "-c",
                "1",
                "-T",
                str(int(seconds)),
                "-f",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    for line in result.stdout.splitlines():
        if line.startswith("tps ="):
            return float(line.split()[2])
    raise RuntimeError(f"pgbench printed no tps:\n{result.stdout}\n{result.stderr}")


def measure(
    templates: dict[str, str], design: str, workload: str, clients: int, args: Any
) -> tuple[Timing, float]:
    """One run: its timing, and the server's CPU seconds per posting."""
    template = templates[design.removeprefix("core-") if design.startswith("core-") else "head"]
    with scratch_database(template) as url:
        if design == "core+fk":
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(CORE_FOREIGN_KEYS)
        client_url = as_operator(url) if design in ("core", "core+fk", "core-0005") else url
        worker = make_worker(
            client_url, "seed" if design == "seed" else "core", args.users, hot=workload == "hot"
        )
        timing = run_clients(worker, clients, args.seconds)
        return timing, timing.server_cpu_seconds / max(timing.operations, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measurements per configuration (the median is reported)",
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--designs", nargs="+", default=["seed", "core-0003", "core-0005", "core", "core+fk"]
    )
    args = parser.parse_args()

    revisions = [d.removeprefix("core-") for d in args.designs if d.startswith("core-")]
    print(f"building the templates ({args.users} users; revisions {revisions} and head)...")
    templates = {"head": build_template(args.users)}
    for revision in revisions:
        templates[revision] = build_template(args.users, revision)
    runs: dict[tuple[str, int, str], list[Timing]] = {}
    cpu: dict[tuple[str, int, str], list[float]] = {}
    overhead: dict[str, list[float]] = {"pgbench": [], "core": []}
    try:
        # Rounds on the outside, so that a noisy minute hurts every design alike.
        for round_number in range(1, args.rounds + 1):
            for workload in ("spread", "hot"):
                for clients in args.clients:
                    for design in args.designs:
                        timing, cpu_per_posting = measure(
                            templates, design, workload, clients, args
                        )
                        runs.setdefault((workload, clients, design), []).append(timing)
                        cpu.setdefault((workload, clients, design), []).append(cpu_per_posting)
                        print(
                            f"  round {round_number} {workload:6} {clients:3} clients "
                            f"{design:9} {timing.throughput:8.0f} postings/s "
                            f"{cpu_per_posting * 1e6:6.0f} us server CPU/posting",
                            flush=True,
                        )
            with scratch_database(templates["head"]) as url:
                tps = run_pgbench(as_operator(url), args.users, args.seconds)
            if tps is not None:
                overhead["pgbench"].append(tps)
                overhead["core"].append(measure(templates, "core", "spread", 1, args)[0].throughput)
    finally:
        with psycopg.connect(server_url(), autocommit=True) as admin:
            for template in templates.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')

    def summary(timings: list[Timing]) -> tuple[float, Timing]:
        pooled = Timing(0, 1, [latency for timing in timings for latency in timing.latencies])
        return median([timing.throughput for timing in timings]), pooled

    columns = [
        "workload",
        "clients",
        "design",
        "postings/s",
        "p50 ms",
        "p99 ms",
        "vs seed",
        "vs core-0003",
        "server CPU us/posting",
    ]
    rows = []
    for (workload, clients, design), timings in runs.items():
        throughput, pooled = summary(timings)
        seed = runs.get((workload, clients, "seed"))
        before = runs.get((workload, clients, "core-0003"))
        rows.append(
            [
                workload,
                clients,
                design,
                f"{throughput:,.0f}",
                f"{pooled.p50_ms:.2f}",
                f"{pooled.p99_ms:.2f}",
                f"{throughput / summary(seed)[0]:.2f}x" if seed else "",
                f"{throughput / summary(before)[0]:.2f}x" if before else "",
                f"{median(cpu[(workload, clients, design)]) * 1e6:.0f}",
            ]
        )
    title = (
        f"Posting: seed design vs walletctl core, median of {args.rounds} rounds of "
        f"{args.seconds:g} s (same server, same run)"
    )
    print_table(title, columns, rows)
    print(markdown_table(columns, rows))
    if overhead["pgbench"]:
        pgbench_tps = median(overhead["pgbench"])
        core_tps = median(overhead["core"])
        print(
            f"\nclient overhead at 1 client (median of {len(overhead['pgbench'])}, spread): "
            f"pgbench running walletctl_post {pgbench_tps:,.0f} postings/s, the core through "
            f"psycopg {core_tps:,.0f} postings/s: {pgbench_tps / core_tps:.2f}x "
            "(target <= 1.25x)"
        )


if __name__ == "__main__":
    main()
