"""What happened: a user's statement, one transaction with its entries, what a key did."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row, dict_row

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import validation
from walletctl.core.models import (
    Connection,
    Entry,
    StatementLine,
    StatementTotal,
    TransactionDetail,
)
from walletctl.core.sqlerrors import translated
from walletctl.errors import (
    AssetNotFound,
    InvalidInput,
    TransactionNotFound,
    UserNotFound,
)

KINDS = ("topup", "bonus", "spend", "reversal")

# The user's entries in posting order ((created_at, id): entry times never go back for an
# account); balance_after is the running balance per asset. Served by
# ix_ledger_entries_account_asset_time. The filters on the transaction (kind, actor, "on
# behalf of", reason) are checked on the joined row: a statement reads one user's entries,
# so no index on them is needed, and a NULL filter costs nothing.
_STATEMENT_WHERE = """
WHERE e.account_id = %(account)s
  AND (%(asset)s::smallint IS NULL OR e.asset_id = %(asset)s)
  AND (%(kind)s::text IS NULL OR t.kind = %(kind)s)
  AND (%(actor)s::text IS NULL OR t.actor = %(actor)s)
  AND (%(on_behalf_of)s::text IS NULL OR t.on_behalf_of = %(on_behalf_of)s)
  AND (%(reason)s::text IS NULL OR t.reason = %(reason)s)
  AND (%(since)s::timestamptz IS NULL OR e.created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR e.created_at < %(until)s)
"""

_STATEMENT_SQL = (
    """
SELECT e.id AS entry_id, e.transaction_id, e.created_at, t.kind, s.code AS asset, e.amount,
       e.balance_after, t.reason, t.actor, t.on_behalf_of, t.idempotency_key, t.reverses
FROM ledger_entries e
JOIN transactions t ON t.id = e.transaction_id
JOIN asset_types s ON s.id = e.asset_id
"""
    + _STATEMENT_WHERE
    + """
  AND (%(after_time)s::timestamptz IS NULL
       OR (e.created_at, e.id) {after} (%(after_time)s, %(after_entry)s))
ORDER BY e.created_at {order}, e.id {order}
LIMIT %(limit)s
"""
)

# What the whole selection adds up to, whatever page is shown: per asset, the number of
# lines and the net amount.
_STATEMENT_TOTALS_SQL = (
    """
SELECT s.code AS asset, count(*) AS entries, coalesce(sum(e.amount), 0)::bigint AS amount
FROM ledger_entries e
JOIN transactions t ON t.id = e.transaction_id
JOIN asset_types s ON s.id = e.asset_id
"""
    + _STATEMENT_WHERE
    + """
GROUP BY s.code
ORDER BY s.code
"""
)

# A cursor is a transaction in the user's statement: one entry per account per transaction
# (uq_ledger_entries_transaction_id_account_id), so one index probe finds where to go on.
_CURSOR_SQL = """
SELECT created_at, id FROM ledger_entries WHERE transaction_id = %s AND account_id = %s
"""

_TRANSACTION_SQL = """
SELECT t.id AS transaction_id, t.kind, a.external_id AS user_id, s.code AS asset,
       t.amount, e.amount AS user_amount, t.idempotency_key, t.reason, t.actor,
       t.on_behalf_of, t.reverses,
       t.created_at, (SELECT r.id FROM transactions r WHERE r.reverses = t.id) AS reversed_by
FROM transactions t
JOIN accounts a ON a.id = t.account_id
JOIN asset_types s ON s.id = t.asset_id
JOIN ledger_entries e ON e.transaction_id = t.id AND e.account_id = t.account_id
WHERE {where}
"""

_ENTRIES_SQL = """
SELECT e.id AS entry_id, coalesce(a.external_id, 'Treasury') AS account, e.amount,
       e.balance_after
FROM ledger_entries e
LEFT JOIN accounts a ON a.id = e.account_id AND a.id <> 0
WHERE e.transaction_id = %s
ORDER BY e.id
"""


@dataclass(frozen=True, slots=True)
class StatementFilter:
    """Which lines of a statement, in which order, from where.

    ``actor`` is the database role that posted (the recorded actor, session_user);
    ``on_behalf_of`` the note a posting carried (the CLI's --actor); ``after`` a transaction
    id of the statement: the lines that come after it in the chosen order."""

    asset: str | None = None
    kind: str | None = None
    actor: str | None = None
    on_behalf_of: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    newest_first: bool = False
    after: int | None = None

    def __post_init__(self) -> None:
        if self.asset is not None:
            validation.asset_code(self.asset)
        check_kind(self.kind)
        validation.limit(self.limit)
        validation.period(self.since, self.until)
        if self.after is not None:
            validation.transaction_id(self.after)


def check_kind(kind: str | None) -> str | None:
    if kind is not None and kind not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


@on_proxy("statement")
def statement(
    conn: Connection, user_id: str, where: StatementFilter | None = None
) -> Iterator[StatementLine]:
    """The user's entries, oldest first (or newest first), streamed from the server
    (constant memory).

    Unknown users, assets and cursors raise here, before the first line is produced."""
    where = where or StatementFilter()
    params = _statement_params(conn, user_id, where)
    if where.after is not None:
        cursor = conn.execute(_CURSOR_SQL, (where.after, params["account"])).fetchone()
        if cursor is None:
            raise TransactionNotFound(
                f"transaction {where.after} is not in the statement of {user_id}"
            )
        params["after_time"], params["after_entry"] = cursor
    sql = _STATEMENT_SQL.format(
        after="<" if where.newest_first else ">", order="DESC" if where.newest_first else "ASC"
    )
    return _stream(conn, sql, params)


@on_proxy("statement_totals")
def statement_totals(
    conn: Connection, user_id: str, where: StatementFilter | None = None
) -> list[StatementTotal]:
    """Per asset, how many lines the statement's filters select and their net amount,
    ignoring the limit and the cursor: what a page is a part of."""
    params = _statement_params(conn, user_id, where or StatementFilter())
    with translated(), conn.cursor(row_factory=class_row(StatementTotal)) as cursor:
        return cursor.execute(_STATEMENT_TOTALS_SQL, params).fetchall()


def _statement_params(conn: Connection, user_id: str, where: StatementFilter) -> dict[str, Any]:
    return {
        "account": _account_id(conn, user_id),
        "asset": None if where.asset is None else _asset_id(conn, where.asset),
        "kind": where.kind,
        "actor": where.actor,
        "on_behalf_of": where.on_behalf_of,
        "reason": where.reason,
        "since": where.since,
        "until": where.until,
        "limit": where.limit,
        "after_time": None,
        "after_entry": None,
    }


def _stream(conn: Connection, sql: str, params: Mapping[str, object]) -> Iterator[StatementLine]:
    with translated(), conn.cursor(row_factory=class_row(StatementLine)) as cursor:
        yield from cursor.stream(sql, params)


@on_proxy("transaction")
def transaction(conn: Connection, transaction_id: int) -> TransactionDetail:
    """One transaction with its entries. Raises TransactionNotFound."""
    detail = _transaction(conn, "t.id = %s", validation.transaction_id(transaction_id))
    if detail is None:
        raise TransactionNotFound(f"transaction {transaction_id} not found")
    return detail


@on_proxy("transaction_by_key")
def transaction_by_key(conn: Connection, idempotency_key: str) -> TransactionDetail | None:
    """The transaction an idempotency key posted, if any."""
    return _transaction(conn, "t.idempotency_key = %s", validation.idempotency_key(idempotency_key))


def _transaction(conn: Connection, where: str, value: object) -> TransactionDetail | None:
    with translated(), conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(_TRANSACTION_SQL.format(where=where), (value,)).fetchone()
        if row is None:
            return None
        entries = cursor.execute(_ENTRIES_SQL, (row["transaction_id"],)).fetchall()
    return TransactionDetail(**row, entries=tuple(Entry(**entry) for entry in entries))


def _account_id(conn: Connection, user_id: str) -> int:
    row = conn.execute(
        "SELECT id FROM accounts WHERE external_id = %s", (validation.user_id(user_id),)
    ).fetchone()
    if row is None:
        raise UserNotFound(f"user {user_id} not found")
    return int(row[0])


def _asset_id(conn: Connection, code: str) -> int:
    row = conn.execute("SELECT id FROM asset_types WHERE code = %s", (code,)).fetchone()
    if row is None:
        raise AssetNotFound(f"asset {code} not found")
    return int(row[0])
