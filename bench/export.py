"""Export designs side by side: the CSV export as it was (times as PostgreSQL's text,
no filters) against the current one (times ISO 8601 in UTC made by to_char, and the
report filters, all NULL), plus the journals with the chart of accounts.

    python -m bench.export [--entries 1000000] [--rounds 3]

One database filled as bench.finance fills it; the designs alternate round by round on
the same data (this machine is noisy), each exporting every entry to memory.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Any

import psycopg

from bench.common import markdown_table, print_table, scratch_database
from bench.finance import load
from walletctl import migrate
from walletctl.core import csv_cells
from walletctl.core.export import ENTRY_COLUMNS, export

# The CSV export before issue 13 (git show d5abfe9:walletctl/core/export.py), kept as the
# baseline variant.
OLD_ENTRIES_SQL = """
SELECT e.id AS entry_id, e.transaction_id, e.created_at, t.kind, u.external_id AS "user",
       CASE WHEN e.account_id = 0 THEN 'Treasury' ELSE u.external_id END AS account,
       s.code AS asset, e.amount, e.balance_after, t.idempotency_key, t.reason, t.actor,
       t.on_behalf_of, t.reverses
FROM ledger_entries e
JOIN transactions t ON t.id = e.transaction_id
JOIN accounts u ON u.id = t.account_id
JOIN asset_types s ON s.id = e.asset_id
WHERE e.created_at >= %(since)s AND e.created_at < %(until)s
ORDER BY e.id
"""
TEXT_COLUMNS = (
    "kind",
    "user",
    "account",
    "asset",
    "idempotency_key",
    "reason",
    "actor",
    "on_behalf_of",
)


def old_csv(conn: psycopg.Connection[Any], out: io.StringIO) -> int:
    columns = ", ".join(
        f'{csv_cells.neutralised_sql(f"entry.{name!r}".replace(chr(39), chr(34)))} AS "{name}"'
        if name in TEXT_COLUMNS
        else f'entry."{name}"'
        for name in ENTRY_COLUMNS
    )
    query = (
        f"COPY (SELECT {columns} FROM ({OLD_ENTRIES_SQL}) entry) "
        "TO STDOUT WITH (FORMAT csv, HEADER)"
    )
    params = {"since": "1970-01-01", "until": "9999-12-31"}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        with conn.cursor() as cursor:
            with cursor.copy(query, params) as copy:
                for block in copy:
                    out.write(bytes(block).decode("utf-8"))
            return cursor.rowcount


DESIGNS = {
    "csv, before (PostgreSQL's time text)": old_csv,
    "csv, now (ISO 8601 UTC, filters NULL)": lambda conn, out: export(conn, out, "csv"),
    "jsonl, now": lambda conn, out: export(conn, out, "jsonl"),
    "ledger, now (chart of accounts)": lambda conn, out: export(conn, out, "ledger"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in DESIGNS}
    rows: dict[str, int] = {}
    with scratch_database(prefix="walletctl_bench_export") as url:
        migrate.upgrade(url)
        load(url, args.entries, args.users)
        with psycopg.connect(url, autocommit=True) as conn:
            for _ in range(args.rounds):
                for name, design in DESIGNS.items():
                    sink = io.StringIO()
                    began = time.perf_counter()
                    rows[name] = design(conn, sink)
                    seconds[name].append(time.perf_counter() - began)
    baseline = statistics.median(seconds[next(iter(DESIGNS))])
    columns = ["design", "rows", "median s", "rows/s", "vs before"]
    table = [
        [
            name,
            f"{rows[name]:,}",
            f"{statistics.median(times):.2f}",
            f"{rows[name] / statistics.median(times):,.0f}",
            f"{statistics.median(times) / baseline:.2f}x",
        ]
        for name, times in seconds.items()
    ]
    print_table(f"Export of {args.entries:,} entries, median of {args.rounds}", columns, table)
    print(markdown_table(columns, table))


if __name__ == "__main__":
    main()
