"""The users the ledger knows: created by their first credit, never deleted."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from psycopg.rows import dict_row

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import validation
from walletctl.core.models import Balance, Connection, UserSummary
from walletctl.core.sqlerrors import translated
from walletctl.errors import UserNotFound

# One row per user with every asset's balance (0 where none is held), in code order: the
# same shape as a user's `balance`. In user id order (the unique index on external_id), or
# newest first (the primary key: account ids are given out in creation order); a cursor
# continues after a user in either order. The entry count is a subquery per user, left out
# when not wanted (balance --all streams every user).
_USERS_SQL = """
SELECT a.external_id AS user_id, a.created_at,
       array_agg(s.code ORDER BY s.code) FILTER (WHERE s.code IS NOT NULL) AS assets,
       array_agg(coalesce(b.balance, 0) ORDER BY s.code) FILTER (WHERE s.code IS NOT NULL)
           AS amounts,
       array_agg(b.updated_at ORDER BY s.code) FILTER (WHERE s.code IS NOT NULL) AS updated,
       {entries} AS transactions,
       coalesce((SELECT f.frozen FROM user_freezes f WHERE f.user_id = a.external_id
                 ORDER BY f.id DESC LIMIT 1), false) AS frozen
FROM (
    SELECT a.* FROM accounts a
    WHERE a.id <> 0 AND (%(user)s::text IS NULL OR a.external_id = %(user)s)
      AND (%(after)s::text IS NULL OR {after})
    ORDER BY {order}
    LIMIT %(limit)s
) a
LEFT JOIN asset_types s ON true
LEFT JOIN balances b ON b.account_id = a.id AND b.asset_id = s.id
GROUP BY a.id, a.external_id, a.created_at
ORDER BY {order}
"""
_ENTRIES = "(SELECT count(*) FROM ledger_entries e WHERE e.account_id = a.id)"
_BY_ID = ("a.external_id > %(after)s", "a.external_id")
_NEWEST_FIRST = (
    "a.id < (SELECT c.id FROM accounts c WHERE c.external_id = %(after)s)",
    "a.id DESC",
)


@on_proxy("list_users")
def list_users(
    conn: Connection,
    *,
    limit: int | None = None,
    after: str | None = None,
    newest_first: bool = False,
    with_entries: bool = True,
) -> Iterator[UserSummary]:
    """Users with their balances, by user id (or newest first), streamed; ``after``
    continues a previous page after that user. Without ``with_entries`` the entry count
    (a count per user) is not read."""
    if after is not None:
        validation.user_id(after)
        if newest_first and not _exists(conn, after):
            raise UserNotFound(f"user {after} not found (--after)")
    params = {"user": None, "after": after, "limit": validation.limit(limit)}
    return _users(conn, params, newest_first=newest_first, with_entries=with_entries)


@on_proxy("count_users")
def count_users(conn: Connection) -> int:
    """How many users the ledger knows."""
    row = conn.execute("SELECT count(*) FROM accounts WHERE id <> 0").fetchone()
    return int(row[0]) if row else 0


@on_proxy("show_user")
def show_user(conn: Connection, user_id: str) -> UserSummary:
    params = {"user": validation.user_id(user_id), "after": None, "limit": 1}
    found = list(_users(conn, params, newest_first=False, with_entries=True))
    if not found:
        raise UserNotFound(f"user {user_id} not found")
    return found[0]


def _exists(conn: Connection, user_id: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM accounts WHERE external_id = %s", (user_id,)).fetchone()
        is not None
    )


def _users(
    conn: Connection, params: Mapping[str, object], *, newest_first: bool, with_entries: bool
) -> Iterator[UserSummary]:
    after, order = _NEWEST_FIRST if newest_first else _BY_ID
    sql = _USERS_SQL.format(
        entries=_ENTRIES if with_entries else "NULL::bigint", after=after, order=order
    )
    with translated(), conn.cursor(row_factory=dict_row) as cursor:
        for row in cursor.stream(sql, params):
            user = row["user_id"]
            yield UserSummary(
                user_id=user,
                created_at=row["created_at"],
                balances=tuple(
                    Balance(user, asset, amount, updated)
                    for asset, amount, updated in zip(
                        row["assets"] or (), row["amounts"] or (), row["updated"] or (), strict=True
                    )
                ),
                transactions=row["transactions"],
                frozen=row["frozen"],
            )
