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
- batches, head vs 0003: the same rows sent straight to walletctl_post_batch in batches of
  5,000 on one connection, today (SECURITY DEFINER, as a walletctl_batch login role, the
  database's chain, sign, balance and text checks) and as it was at schema revision 0003
  (running as the caller, a superuser): the cost of least privilege on the bulk path;
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
from urllib.parse import urlsplit, urlunsplit

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


BATCH_ROLE = "walletctl_bench_batch"
BATCH_SIZE = 5000


def build_template(users: int, revision: str = "head") -> str:
    name = f"walletctl_bench_bulk_template_{users}_{revision}"
    with psycopg.connect(server_url(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url(), name)
    migrate.upgrade(url, revision)
    with psycopg.connect(url, autocommit=True) as conn:
        if revision == "head":
            conn.execute("SELECT walletctl_add_asset('GOLD', 'Gold Coins')")
            if not conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (BATCH_ROLE,)
            ).fetchone():
                conn.execute(f"CREATE ROLE {BATCH_ROLE} LOGIN")
            conn.execute(f"GRANT walletctl_batch TO {BATCH_ROLE}")
        else:
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


def run_batches(url: str, file: Path, revision: str) -> float:
    """The file's rows straight to walletctl_post_batch, as today or as at 0003."""
    lines = file.read_text().splitlines()[1:]
    rows = [(number, *line.split(",")) for number, line in enumerate(lines, start=1)]
    # The same call at both revisions: (kind, actor at 0003 / on behalf of today, rows...).
    sql = "SELECT count(*) FROM walletctl_post_batch('bonus', 'bench', %s, %s, %s, %s, %s, %s)"
    if revision == "head":
        parts = urlsplit(url)
        url = urlunsplit(parts._replace(netloc=f"{BATCH_ROLE}@{parts.netloc.rpartition('@')[2]}"))
    with psycopg.connect(url) as conn:
        began = time.perf_counter()
        for start in range(0, len(rows), BATCH_SIZE):
            batch = rows[start : start + BATCH_SIZE]
            conn.execute(
                sql,
                (
                    [row[0] for row in batch],
                    [row[1] for row in batch],
                    ["GOLD"] * len(batch),
                    [int(row[2]) for row in batch],
                    [f"batch:{row[0]}" for row in batch],
                    ["bench"] * len(batch),
                ),
            ).fetchone()
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
                on_behalf_of="bench",
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

    templates = {"head": build_template(args.users), "0003": build_template(args.users, "0003")}
    seconds: dict[str, list[float]] = {
        "cli": [],
        "raw": [],
        "batches": [],
        "batches-0003": [],
        "single": [],
    }
    try:
        with tempfile.TemporaryDirectory() as folder:
            file = Path(folder) / "bonuses.csv"
            write_rows(file, args.rows, args.users)
            for round_number in range(1, args.rounds + 1):
                for design, revision, run in (
                    ("raw", "head", lambda url: run_raw_floor(url, file)),
                    ("cli", "head", lambda url: run_cli(url, file)),
                    ("batches", "head", lambda url: run_batches(url, file, "head")),
                    ("batches-0003", "0003", lambda url: run_batches(url, file, "0003")),
                    ("single", "head", lambda url: run_single(url, file, args.single_rows)),
                ):
                    with scratch_database(templates[revision]) as url:
                        seconds[design].append(run(url))
                    print(
                        f"  round {round_number} {design:6} {seconds[design][-1]:.2f} s", flush=True
                    )
    finally:
        with psycopg.connect(server_url(), autocommit=True) as admin:
            for template in templates.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')

    rates = {
        design: (args.single_rows if design == "single" else args.rows) / median(timings)
        for design, timings in seconds.items()
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
            "batches of 5,000, today (walletctl_batch role)",
            f"{args.rows:,}",
            f"{median(seconds['batches']):.2f}",
            f"{rates['batches']:,.0f}",
            f"{rates['batches'] / rates['raw']:.2f}x",
        ],
        [
            "batches of 5,000, revision 0003 (superuser)",
            f"{args.rows:,}",
            f"{median(seconds['batches-0003']):.2f}",
            f"{rates['batches-0003']:,.0f}",
            f"{rates['batches-0003'] / rates['raw']:.2f}x",
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
