"""Bulk posting: a file of 100,000 bonuses through the CLI, against the raw floor and
against one posting per row, side by side in one run.

    python -m bench.bulk [--rows 100000] [--users 10000] [--rounds 3]

Each measurement starts from an identical copy of one template database (--users users,
each funded once):

- cli: ``walletctl bonus --file rows.csv --key-prefix ... --yes`` as a real process, end to
  end (start-up, reading and validating the file, batches, summary);
- raw floor: the same file sent by COPY into a staging table, then one INSERT ... SELECT
  writing the same transactions and ledger entries, with no checks at all (no triggers, no
  idempotency lookups, no balance locks or updates);
- one posting per row: walletctl.core.posting.bonus in a loop on one connection, over the
  first --single-rows rows (its rate is what matters).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import (
    markdown_table,
    median,
    print_table,
    scratch_database,
    server_url,
    with_database,
)
from walletctl import migrate
from walletctl.core import posting

RAW_FLOOR_SQL = """
WITH booked AS (
    INSERT INTO transactions
        (kind, account_id, asset_id, amount, idempotency_key, reason, actor, created_at)
    SELECT 'bonus', a.id, 1, s.amount, 'raw:' || s.line, 'bench', 'bench', now()
    FROM staging s JOIN accounts a ON a.external_id = s.user_id
    RETURNING id, account_id, amount
)
INSERT INTO ledger_entries (transaction_id, account_id, asset_id, amount, balance_after, created_at)
SELECT id, account_id, 1, amount, amount, now() FROM booked
UNION ALL
SELECT id, 0, 1, -amount, NULL, now() FROM booked
"""


def build_template(users: int) -> str:
    name = f"walletctl_bench_bulk_template_{users}"
    with psycopg.connect(server_url(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url(), name)
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO asset_types (code, name) VALUES ('GOLD', 'Gold Coins')")
        conn.execute(
            "SELECT walletctl_post('topup', 'user-' || g, 'GOLD', 1000, 'fund-' || g, NULL, "
            "'bench') FROM generate_series(1, %s) g",
            (users,),
        )
        conn.execute("VACUUM ANALYZE")
    return name


def write_rows(path: Path, rows: int, users: int) -> None:
    with path.open("w") as out:
        out.write("user,amount\n")
        for row in range(1, rows + 1):
            out.write(f"user-{1 + (row * 7919) % users},{1 + row % 250}\n")


def run_cli(url: str, file: Path) -> float:
    env = {
        **os.environ,
        "WALLETCTL_DATABASE_URL": url,
        "WALLETCTL_CONFIG": os.devnull,  # no config file
        "WALLETCTL_ACTOR": "bench",
    }
    began = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "walletctl",
            "bonus",
            "--file",
            str(file),
            "--key-prefix",
            "bench",
            "--reason",
            "bench",
            "--yes",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"walletctl failed ({result.returncode}): {result.stderr}")
    return elapsed


def run_raw_floor(url: str, file: Path) -> float:
    data = file.read_bytes()
    began = time.perf_counter()
    with psycopg.connect(url) as conn:
        conn.execute("SET session_replication_role = replica")  # no triggers: no checks
        conn.execute("CREATE TEMPORARY TABLE staging (line bigserial, user_id text, amount bigint)")
        with conn.cursor().copy(
            "COPY staging (user_id, amount) FROM STDIN WITH (FORMAT csv, HEADER)"
        ) as copy:
            copy.write(data)
        conn.execute(RAW_FLOOR_SQL)
        conn.commit()
    return time.perf_counter() - began


def run_single(url: str, file: Path, rows: int) -> float:
    lines = file.read_text().splitlines()[1 : rows + 1]
    with psycopg.connect(url, autocommit=True) as conn:
        began = time.perf_counter()
        for number, line in enumerate(lines, start=1):
            user, amount = line.split(",")
            posting.bonus(
                conn,
                user,
                int(amount),
                asset="GOLD",
                idempotency_key=f"one:{number}",
                actor="bench",
                reason="bench",
            )
        return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--single-rows", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    template = build_template(args.users)
    seconds: dict[str, list[float]] = {"cli": [], "raw": [], "single": []}
    try:
        with tempfile.TemporaryDirectory() as folder:
            file = Path(folder) / "bonuses.csv"
            write_rows(file, args.rows, args.users)
            for round_number in range(1, args.rounds + 1):
                for design, run in (
                    ("raw", lambda url: run_raw_floor(url, file)),
                    ("cli", lambda url: run_cli(url, file)),
                    ("single", lambda url: run_single(url, file, args.single_rows)),
                ):
                    with scratch_database(template) as url:
                        seconds[design].append(run(url))
                    print(
                        f"  round {round_number} {design:6} {seconds[design][-1]:.2f} s", flush=True
                    )
    finally:
        with psycopg.connect(server_url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')

    rates = {
        "raw": args.rows / median(seconds["raw"]),
        "cli": args.rows / median(seconds["cli"]),
        "single": args.single_rows / median(seconds["single"]),
    }
    columns = ["design", "rows", "median seconds", "rows/s", "vs raw floor"]
    rows = [
        [
            "raw floor: COPY + one INSERT ... SELECT, no checks",
            f"{args.rows:,}",
            f"{median(seconds['raw']):.2f}",
            f"{rates['raw']:,.0f}",
            "1.00x",
        ],
        [
            "walletctl bonus --file (CLI, end to end)",
            f"{args.rows:,}",
            f"{median(seconds['cli']):.2f}",
            f"{rates['cli']:,.0f}",
            f"{rates['cli'] / rates['raw']:.2f}x",
        ],
        [
            "one posting per row (core, 1 connection)",
            f"{args.single_rows:,}",
            f"{median(seconds['single']):.2f}",
            f"{rates['single']:,.0f}",
            f"{rates['single'] / rates['raw']:.2f}x",
        ],
    ]
    print_table(
        f"Bulk posting, median of {args.rounds} rounds (same server, same run)", columns, rows
    )
    print(markdown_table(columns, rows))


if __name__ == "__main__":
    main()
