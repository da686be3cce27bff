"""The users the ledger knows: created by their first credit, never deleted."""

from __future__ import annotations

from collections.abc import Iterator

from psycopg.rows import dict_row

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import validation
from walletctl.core.models import Connection, UserSummary
from walletctl.core.sqlerrors import translated
from walletctl.errors import UserNotFound

_USERS_SQL = """
SELECT a.external_id AS user_id, a.created_at,
       coalesce(array_agg(s.code ORDER BY s.code) FILTER (WHERE s.code IS NOT NULL), '{}')
           AS assets,
       coalesce(array_agg(b.balance ORDER BY s.code) FILTER (WHERE s.code IS NOT NULL), '{}')
           AS amounts,
       (SELECT count(*) FROM ledger_entries e WHERE e.account_id = a.id) AS transactions,
       coalesce((SELECT f.frozen FROM user_freezes f WHERE f.user_id = a.external_id
                 ORDER BY f.id DESC LIMIT 1), false) AS frozen
FROM accounts a
LEFT JOIN balances b ON b.account_id = a.id
LEFT JOIN asset_types s ON s.id = b.asset_id
WHERE a.id <> 0 AND (%(user)s::text IS NULL OR a.external_id = %(user)s)
  AND (%(after)s::text IS NULL OR a.external_id > %(after)s)
GROUP BY a.id
ORDER BY a.external_id
LIMIT %(limit)s
"""


@on_proxy("list_users")
def list_users(
    conn: Connection, *, limit: int | None = None, after: str | None = None
) -> Iterator[UserSummary]:
    """Users in id order with their balances; ``after`` continues a previous page."""
    return _users(conn, {"user": None, "after": after, "limit": validation.limit(limit)})


@on_proxy("show_user")
def show_user(conn: Connection, user_id: str) -> UserSummary:
    found = list(_users(conn, {"user": validation.user_id(user_id), "after": None, "limit": 1}))
    if not found:
        raise UserNotFound(f"user {user_id} not found")
    return found[0]


def _users(conn: Connection, params: dict[str, object]) -> Iterator[UserSummary]:
    with translated(), conn.cursor(row_factory=dict_row) as cursor:
        for row in cursor.stream(_USERS_SQL, params):
            yield UserSummary(
                user_id=row["user_id"],
                created_at=row["created_at"],
                balances=tuple(zip(row["assets"], row["amounts"], strict=True)),
                transactions=row["transactions"],
                frozen=row["frozen"],
            )
