"""Balances: a user's now (the cached row), a user's at a past time (one index lookup on
the ledger), and the Treasury's side (what all users hold)."""

from __future__ import annotations

from datetime import datetime

from psycopg.rows import class_row

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import validation
from walletctl.core.models import Balance, Connection, Outstanding
from walletctl.core.sqlerrors import translated
from walletctl.errors import AssetNotFound, UserNotFound

# Every asset appears, held or not; a user who never held an asset holds 0 of it.
_BALANCES_SQL = """
SELECT a.external_id AS user_id, s.code AS asset, coalesce(b.balance, 0) AS balance,
       b.updated_at
FROM accounts a
CROSS JOIN asset_types s
LEFT JOIN balances b ON b.account_id = a.id AND b.asset_id = s.id
WHERE a.external_id = %(user)s AND (%(asset)s::text IS NULL OR s.code = %(asset)s)
ORDER BY s.code
"""

# The last entry at or before the time carries the balance then: one descent of
# ix_ledger_entries_account_asset_time per asset, however long the history.
_BALANCES_AS_OF_SQL = """
SELECT a.external_id AS user_id, s.code AS asset, coalesce(last.balance_after, 0) AS balance,
       last.created_at AS updated_at
FROM accounts a
CROSS JOIN asset_types s
LEFT JOIN LATERAL (
    SELECT e.balance_after, e.created_at
    FROM ledger_entries e
    WHERE e.account_id = a.id AND e.asset_id = s.id AND e.created_at <= %(at)s
    ORDER BY e.created_at DESC, e.id DESC
    LIMIT 1
) last ON true
WHERE a.external_id = %(user)s AND (%(asset)s::text IS NULL OR s.code = %(asset)s)
ORDER BY s.code
"""

_OUTSTANDING_SQL = """
SELECT s.code AS asset, coalesce(sum(b.balance), 0)::bigint AS outstanding,
       count(b.account_id) FILTER (WHERE b.balance > 0) AS holders,
       -coalesce(sum(b.balance), 0)::bigint AS treasury_balance
FROM asset_types s
LEFT JOIN balances b ON b.asset_id = s.id
GROUP BY s.code
ORDER BY s.code
"""


@on_proxy("balances")
def balances(
    conn: Connection, user_id: str, *, asset: str | None = None, as_of: datetime | None = None
) -> list[Balance]:
    """The user's balance in each asset (or in ``asset``), now or at ``as_of``.

    Raises UserNotFound for a user that never received a credit, AssetNotFound for an
    unknown asset.
    """
    params = {
        "user": validation.user_id(user_id),
        "asset": None if asset is None else validation.asset_code(asset),
        "at": as_of,
    }
    sql = _BALANCES_SQL if as_of is None else _BALANCES_AS_OF_SQL
    with translated(), conn.cursor(row_factory=class_row(Balance)) as cursor:
        rows = cursor.execute(sql, params).fetchall()
    if rows:
        return rows
    # No row: every asset appears for a user who exists, so the user or the asset does not.
    with translated():
        if not conn.execute(
            "SELECT 1 FROM accounts WHERE external_id = %s", (params["user"],)
        ).fetchone():
            raise UserNotFound(f"user {user_id} not found")
        if asset is not None:
            raise AssetNotFound(f"asset {asset} not found")
        return []


@on_proxy("outstanding")
def outstanding(conn: Connection) -> list[Outstanding]:
    """Per asset: what users hold in total (the liability) and the Treasury's balance, its
    negation. Read from the balance cache; reconcile proves the cache equals the ledger."""
    with translated(), conn.cursor(row_factory=class_row(Outstanding)) as cursor:
        return cursor.execute(_OUTSTANDING_SQL).fetchall()
