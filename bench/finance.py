"""Finance at scale: reads, reconcile and export on ledgers of 1M and 20M entries.

    python -m bench.finance [--sizes 1000000 20000000] [--users 100000]

For each size, a fresh database is migrated and filled in SQL (generate_series, triggers off
for the load only, secondary indexes rebuilt after): every user starts with a top-up of
1,000,000 GOLD, then top-ups, bonuses and spends spread over --users users, one every
100 ms of simulated time. The ledger is checked by a full reconcile before anything is
measured. Then, side by side:

- balance read and --as-of read (median of 300 random users / times);
- full reconcile (order-aware running balances, fingerprinted shapes, every cached balance
  looked up) against the design before it (order-unaware fingerprints,
  bench/reconcile_before.py) and one sequential scan of ledger_entries (count and sum);
- seal of the whole history (its reconcile and the hashing, one snapshot), then 100,000 new
  entries posted through walletctl_post, then the default reconcile, against the design
  before it (no look at the caches of users without new entries), with its two new passes
  timed alone: every cached balance against its last entry, and the new entries' chains;
- reconcile --full with the whole history sealed (it re-hashes it: what a weekly run costs);
- export throughput (csv and beancount) over the last 1,000,000 entries.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench import reconcile_before
from bench.common import markdown_table, print_table, scratch_database
from walletctl import migrate
from walletctl.core import balances, checkpoints, seal
from walletctl.core import reconcile_sql as sql
from walletctl.core.export import export
from walletctl.core.reconcile import reconcile

START = datetime(2025, 1, 1, tzinfo=UTC)
STEP = timedelta(milliseconds=100)
NEW_ENTRIES = 100_000
EXPORT_ENTRIES = 1_000_000

LOAD_SQL = [
    "INSERT INTO asset_types (code, name) VALUES ('GOLD', 'Gold Coins')",
    "INSERT INTO accounts (id, external_id) SELECT g, 'user-' || g "
    "FROM generate_series(1, %(users)s) g",
    # Transaction g: the first --users are each user's opening top-up; after that a spread
    # of users by multiplicative hashing, 40% spends of 1-50, 10% bonuses, 50% top-ups.
    """
    INSERT INTO transactions
        (id, kind, account_id, asset_id, amount, idempotency_key, reason, actor, created_at)
    SELECT g, k.kind,
           CASE WHEN g <= %(users)s THEN g ELSE 1 + (g * 2654435761) %% %(users)s END,
           1,
           CASE WHEN g <= %(users)s THEN 1000000 ELSE 1 + g %% 50 END,
           'gen-' || g,
           CASE WHEN k.kind = 'bonus' THEN 'bench bonus' END,
           'bench',
           %(start)s + g * %(step)s
    FROM generate_series(1, %(transactions)s) g,
         LATERAL (SELECT CASE WHEN g <= %(users)s THEN 'topup'
                              WHEN g %% 10 < 4 THEN 'spend'
                              WHEN g %% 10 = 4 THEN 'bonus'
                              ELSE 'topup' END AS kind) k
    """,
    """
    INSERT INTO ledger_entries
        (id, transaction_id, account_id, asset_id, amount, balance_after, created_at)
    SELECT 2 * t.id - 1, t.id, t.account_id, 1, d.delta,
           sum(d.delta) OVER (PARTITION BY t.account_id ORDER BY t.id), t.created_at
    FROM transactions t,
         LATERAL (SELECT CASE WHEN t.kind = 'spend' THEN -t.amount ELSE t.amount END) d(delta)
    """,
    """
    INSERT INTO ledger_entries
        (id, transaction_id, account_id, asset_id, amount, balance_after, created_at)
    SELECT 2 * t.id, t.id, 0, 1, CASE WHEN t.kind = 'spend' THEN t.amount ELSE -t.amount END,
           NULL, t.created_at
    FROM transactions t
    """,
    """
    INSERT INTO balances (account_id, asset_id, balance, updated_at)
    SELECT account_id, 1, sum(amount), max(created_at) FROM ledger_entries
    WHERE account_id <> 0 GROUP BY account_id
    """,
    "SELECT setval(pg_get_serial_sequence('accounts', 'id'), %(users)s)",
    "SELECT setval(pg_get_serial_sequence('transactions', 'id'), %(transactions)s)",
    "SELECT setval(pg_get_serial_sequence('ledger_entries', 'id'), 2 * %(transactions)s)",
]

SECONDARY_INDEXES_SQL = """
SELECT indexname, indexdef FROM pg_indexes
WHERE schemaname = 'public' AND tablename IN ('transactions', 'ledger_entries')
  AND indexname NOT LIKE 'pk_%'
"""


def load(url: str, entries: int, users: int) -> float:
    """Fill the ledger; returns seconds taken."""
    began = time.perf_counter()
    transactions = entries // 2
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("SET work_mem = '512MB'")
        indexes = conn.execute(SECONDARY_INDEXES_SQL).fetchall()
        for name, _ in indexes:
            conn.execute(
                f"ALTER TABLE {'ledger_entries' if 'ledger' in name else 'transactions'} "
                f"DROP CONSTRAINT IF EXISTS {name}"
            )
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        with conn.transaction():
            # Bulk load only: the append-only and zero-sum triggers stay off for this one
            # transaction (superuser), then the full reconcile below checks the result.
            conn.execute("SET LOCAL session_replication_role = replica")
            params = {"users": users, "transactions": transactions, "start": START, "step": STEP}
            for statement in LOAD_SQL:
                conn.execute(statement, params)
        for name, definition in indexes:
            if name.startswith("uq_ledger_entries"):
                conn.execute(
                    "ALTER TABLE ledger_entries ADD CONSTRAINT uq_ledger_entries_transaction_id_"
                    "account_id UNIQUE (transaction_id, account_id) INCLUDE (asset_id, amount)"
                )
            else:
                conn.execute(definition)
        conn.execute("VACUUM (ANALYZE) ledger_entries")
        conn.execute("VACUUM (ANALYZE) transactions")
        conn.execute("VACUUM (ANALYZE) balances")
    return time.perf_counter() - began


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = action()
    return time.perf_counter() - began, result


def best_of(action: Callable[[], Any], rounds: int = 2) -> tuple[float, Any]:
    """The fastest of ``rounds`` runs (this machine is shared and noisy), and its result."""
    return min((timed(action) for _ in range(rounds)), key=lambda outcome: outcome[0])


def one_query(conn: psycopg.Connection[Any], query: str, params: Any = None) -> None:
    """One of reconcile's queries alone, as reconcile runs it (JIT off)."""
    with conn.transaction():
        conn.execute("SET LOCAL jit = off")
        conn.execute(query, params).fetchall()


def median_latency_ms(action: Callable[[random.Random], Any], count: int = 300) -> float:
    rng = random.Random(7)
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        action(rng)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


def measure(entries: int, users: int) -> dict[str, Any]:
    results: dict[str, Any] = {"entries": entries}
    with scratch_database(prefix="walletctl_bench_finance") as url:
        migrate.upgrade(url)
        print(f"[{entries:,}] loading...", flush=True)
        results["load_s"] = load(url, entries, users)
        transactions = entries // 2
        last_time = START + transactions * STEP
        with psycopg.connect(url, autocommit=True) as conn:

            def balance_read(rng: random.Random) -> None:
                balances.balances(conn, f"user-{rng.randint(1, users)}")

            def as_of_read(rng: random.Random) -> None:
                moment = START + rng.random() * (last_time - START)
                balances.balances(conn, f"user-{rng.randint(1, users)}", as_of=moment)

            results["balance_ms"] = median_latency_ms(balance_read)
            results["as_of_ms"] = median_latency_ms(as_of_read)

            print(f"[{entries:,}] sequential scan and full reconcile...", flush=True)
            results["scan_s"], _ = timed(
                lambda: conn.execute("SELECT count(*), sum(amount) FROM ledger_entries").fetchone()
            )
            # New and before alternate, fastest of two each: the same caches for both.
            results["full_reconcile_s"], report = best_of(lambda: reconcile(conn, full=True))
            assert report.passed, [check for check in report.checks if not check.passed]
            results["full_before_s"], _ = best_of(lambda: reconcile_before.full_reconcile(conn))

            print(f"[{entries:,}] sealing...", flush=True)
            results["seal_s"], checkpoint = timed(lambda: seal.seal(conn))
            assert checkpoint is not None and checkpoint.transactions == transactions

            print(f"[{entries:,}] posting {NEW_ENTRIES:,} new entries...", flush=True)
            conn.execute(
                "SELECT walletctl_post(CASE WHEN g %% 3 = 0 THEN 'spend' ELSE 'topup' END, "
                "'user-' || (1 + (g * 40503) %% %s), 'GOLD', 1 + g %% 40, 'new-' || g, NULL, "
                "'bench') FROM generate_series(1, %s) g",
                (users, NEW_ENTRIES // 2),
            )
            conn.execute("VACUUM (ANALYZE) ledger_entries")
            results["incremental_reconcile_s"], report = best_of(lambda: reconcile(conn))
            assert report.passed and report.mode == "incremental", report
            assert report.notes == (), report.notes  # the tripwire stays quiet
            results["incremental_before_s"], _ = best_of(
                lambda: reconcile_before.default_reconcile(conn)
            )
            horizon = {"horizon": checkpoint.horizon}
            results["per_balance_s"], _ = best_of(lambda: one_query(conn, sql.CACHED_BALANCES_SQL))
            results["new_chains_s"], _ = best_of(
                lambda: one_query(conn, sql.NEW_CHAINS_SQL, horizon)
            )

            print(f"[{entries:,}] reconcile --full with sealed history...", flush=True)
            results["full_sealed_s"], report = timed(lambda: reconcile(conn, full=True))
            assert report.passed, report
            assert checkpoints.latest_checkpoint(conn) is not None

            since = START + (transactions - EXPORT_ENTRIES // 2) * STEP
            for fmt in ("csv", "beancount"):
                sink = io.StringIO()
                seconds, rows = timed(
                    lambda fmt=fmt, sink=sink: export(conn, sink, fmt, since=since)
                )
                per_row = rows * (2 if fmt == "csv" else 1)  # entries either way
                results[f"export_{fmt}_rows_s"] = (rows if fmt == "csv" else per_row) / seconds
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 20_000_000])
    parser.add_argument("--users", type=int, default=100_000)
    args = parser.parse_args()
    runs = [measure(size, args.users) for size in args.sizes]

    users = args.users

    def row(label: str, key: str, unit: str, fmt: str = "{:.2f}") -> list[str]:
        values = [run[key] for run in runs]
        cells = [f"{fmt.format(value)} {unit}" for value in values]
        ratio = f"{values[-1] / values[0]:.2f}x" if len(values) > 1 and values[0] else ""
        return [label, *cells, ratio]

    columns = ["what", *(f"{run['entries']:,} entries" for run in runs), "largest / smallest"]
    rows = [
        row("load (generate_series, indexes rebuilt)", "load_s", "s", "{:.1f}"),
        row("balance read, median", "balance_ms", "ms"),
        row("--as-of read, median", "as_of_ms", "ms"),
        row("one sequential scan of ledger_entries", "scan_s", "s"),
        row("full reconcile, nothing sealed (order-aware)", "full_reconcile_s", "s"),
        row("  before: order-unaware fingerprints", "full_before_s", "s"),
        row("seal the whole history (reconcile + hash, one snapshot)", "seal_s", "s", "{:.1f}"),
        row(
            f"default reconcile after {NEW_ENTRIES:,} new entries",
            "incremental_reconcile_s",
            "s",
        ),
        row("  before: new entries only, touched caches only", "incremental_before_s", "s"),
        row(f"  of which: every cached balance ({users:,} lookups)", "per_balance_s", "s"),
        row("  of which: the new entries' chains", "new_chains_s", "s"),
        row("reconcile --full, all history sealed (re-hash)", "full_sealed_s", "s", "{:.1f}"),
        row("export csv", "export_csv_rows_s", "entries/s", "{:,.0f}"),
        row("export beancount", "export_beancount_rows_s", "entries/s", "{:,.0f}"),
    ]
    ratios = [
        [label, *(f"{run[top] / run[bottom]:.2f}x" for run in runs), ""]
        for label, top, bottom in (
            ("full reconcile / sequential scan", "full_reconcile_s", "scan_s"),
            ("full reconcile / before", "full_reconcile_s", "full_before_s"),
            ("default reconcile / before", "incremental_reconcile_s", "incremental_before_s"),
        )
    ]
    print_table("Finance at scale (same server, same run)", columns, rows + ratios)
    print(markdown_table(columns, rows + ratios))


if __name__ == "__main__":
    main()
