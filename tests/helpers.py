"""Shared checks of the ledger, read straight from the database."""

from __future__ import annotations

from typing import Any

import psycopg


def ledger_snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every walletctl table the connection may read (run_locks only as a
    superuser): equal snapshots mean nothing was written."""
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT c.relname FROM pg_class c"
            " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')"
            " AND has_table_privilege(c.oid, 'SELECT') ORDER BY c.relname"
        )
    ]
    return {
        table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
        for table in tables
    }


def assert_ledger_consistent(conn: psycopg.Connection[Any]) -> None:
    """The invariants, computed independently of walletctl's own reconcile."""
    unbalanced = conn.execute(
        "SELECT transaction_id FROM ledger_entries GROUP BY transaction_id HAVING sum(amount) <> 0"
    ).fetchall()
    assert unbalanced == [], f"transactions whose entries do not sum to zero: {unbalanced}"
    per_asset = conn.execute(
        "SELECT asset_id, sum(amount) FROM ledger_entries GROUP BY asset_id HAVING sum(amount) <> 0"
    ).fetchall()
    assert per_asset == [], f"assets whose entries do not sum to zero: {per_asset}"
    drift = conn.execute(
        """
        SELECT coalesce(b.account_id, l.account_id), coalesce(b.asset_id, l.asset_id),
               b.balance, l.total
        FROM balances b
        FULL JOIN (SELECT account_id, asset_id, sum(amount) AS total FROM ledger_entries
                   WHERE account_id <> 0 GROUP BY account_id, asset_id) l
          ON l.account_id = b.account_id AND l.asset_id = b.asset_id
        WHERE b.balance IS DISTINCT FROM l.total
        """
    ).fetchall()
    assert drift == [], f"cached balances that differ from the ledger: {drift}"
    negative = conn.execute("SELECT * FROM balances WHERE balance < 0").fetchall()
    assert negative == []
    shape = conn.execute(
        """
        SELECT t.id FROM transactions t
        LEFT JOIN ledger_entries u ON u.transaction_id = t.id AND u.account_id = t.account_id
        LEFT JOIN ledger_entries r ON r.transaction_id = t.id AND r.account_id = 0
        WHERE u.id IS NULL OR r.id IS NULL
           OR (SELECT count(*) FROM ledger_entries e WHERE e.transaction_id = t.id) <> 2
        """
    ).fetchall()
    assert shape == [], f"transactions without exactly a user and a Treasury entry: {shape}"
    last_entry_mismatch = conn.execute(
        """
        SELECT b.account_id, b.asset_id FROM balances b
        JOIN LATERAL (SELECT balance_after FROM ledger_entries e
                      WHERE e.account_id = b.account_id AND e.asset_id = b.asset_id
                      ORDER BY e.created_at DESC, e.id DESC LIMIT 1) last ON true
        WHERE last.balance_after <> b.balance
        """
    ).fetchall()
    assert last_entry_mismatch == [], (
        f"balance_after of the last entry differs: {last_entry_mismatch}"
    )


def balance_of(conn: psycopg.Connection[Any], user_id: str, asset: str = "GOLD") -> int:
    row = conn.execute(
        """
        SELECT b.balance FROM balances b
        JOIN accounts a ON a.id = b.account_id JOIN asset_types s ON s.id = b.asset_id
        WHERE a.external_id = %s AND s.code = %s
        """,
        (user_id, asset),
    ).fetchone()
    return int(row[0]) if row else 0
