"""What happened: a user's statement, one transaction with its entries, what a key did."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row, dict_row

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import validation
from walletctl.core.models import Connection, Entry, StatementLine, TransactionDetail
from walletctl.core.sqlerrors import translated
from walletctl.errors import AssetNotFound, InvalidInput, TransactionNotFound, UserNotFound

KINDS = ("topup", "bonus", "spend", "reversal")

# The user's entries in posting order; balance_after is the running balance per asset.
# Served by ix_ledger_entries_account_asset_time.
_STATEMENT_SQL = """
SELECT e.id AS entry_id, e.transaction_id, e.created_at, t.kind, s.code AS asset, e.amount,
       e.balance_after, t.reason, t.actor, t.on_behalf_of, t.idempotency_key, t.reverses
FROM ledger_entries e
JOIN transactions t ON t.id = e.transaction_id
JOIN asset_types s ON s.id = e.asset_id
WHERE e.account_id = %(account)s
  AND (%(asset)s::smallint IS NULL OR e.asset_id = %(asset)s)
  AND (%(kind)s::text IS NULL OR t.kind = %(kind)s)
  AND (%(since)s::timestamptz IS NULL OR e.created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR e.created_at < %(until)s)
ORDER BY e.created_at, e.id
LIMIT %(limit)s
"""

_TRANSACTION_SQL = """
SELECT t.id AS transaction_id, t.kind, a.external_id AS user_id, s.code AS asset, t.amount,
       t.idempotency_key, t.reason, t.actor, t.on_behalf_of, t.reverses, t.created_at,
       (SELECT r.id FROM transactions r WHERE r.reverses = t.id) AS reversed_by
FROM transactions t
JOIN accounts a ON a.id = t.account_id
JOIN asset_types s ON s.id = t.asset_id
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
    asset: str | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.asset is not None:
            validation.asset_code(self.asset)
        if self.kind is not None and self.kind not in KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        validation.limit(self.limit)
        validation.period(self.since, self.until)


@on_proxy("statement")
def statement(
    conn: Connection, user_id: str, where: StatementFilter | None = None
) -> Iterator[StatementLine]:
    """The user's entries, oldest first, streamed from the server (constant memory).

    Unknown users and assets raise here, before the first line is produced."""
    where = where or StatementFilter()
    account_id = _account_id(conn, user_id)
    asset_id = None if where.asset is None else _asset_id(conn, where.asset)
    params = {
        "account": account_id,
        "asset": asset_id,
        "kind": where.kind,
        "since": where.since,
        "until": where.until,
        "limit": where.limit,
    }
    return _stream(conn, params)


def _stream(conn: Connection, params: Mapping[str, object]) -> Iterator[StatementLine]:
    with translated(), conn.cursor(row_factory=class_row(StatementLine)) as cursor:
        yield from cursor.stream(_STATEMENT_SQL, params)


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
