"""Posting: top-ups, bonuses, spends and reversals.

Each call is one round trip to one server-side function (walletctl_post or
walletctl_reverse, in the first migration), which runs as one database transaction on an
autocommit connection and locks only the user's balance row. The SQL is fixed text, so
psycopg prepares it once per connection and reuses the plan.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from psycopg.pq import TransactionStatus
from psycopg.rows import class_row

from walletctl.core import validation
from walletctl.core.models import Connection, PostingKind, Receipt
from walletctl.core.sqlerrors import KeyClaimedConcurrently, translated
from walletctl.errors import InvalidInput

POST_SQL = "SELECT * FROM walletctl_post(%s, %s, %s, %s, %s, %s, %s)"
REVERSE_SQL = "SELECT * FROM walletctl_reverse(%s, %s, %s, %s)"

# A posting that loses the race for its key is undone and asked again once; the second
# call finds the winner's row. More than one loss in a row would mean a bug.
_CLAIM_ATTEMPTS = 3


def topup(
    conn: Connection,
    user_id: str,
    amount: int,
    *,
    asset: str,
    idempotency_key: str,
    actor: str,
    reason: str | None = None,
) -> Receipt:
    """Credit ``amount`` bought by the user. Creates the user on their first credit."""
    return post(
        conn,
        "topup",
        user_id,
        amount,
        asset=asset,
        idempotency_key=idempotency_key,
        actor=actor,
        reason=reason,
    )


def bonus(
    conn: Connection,
    user_id: str,
    amount: int,
    *,
    asset: str,
    idempotency_key: str,
    actor: str,
    reason: str,
) -> Receipt:
    """Credit ``amount`` granted for free (referral, promotion). A reason is required."""
    return post(
        conn,
        "bonus",
        user_id,
        amount,
        asset=asset,
        idempotency_key=idempotency_key,
        actor=actor,
        reason=reason,
    )


def spend(
    conn: Connection,
    user_id: str,
    amount: int,
    *,
    asset: str,
    idempotency_key: str,
    actor: str,
    reason: str | None = None,
) -> Receipt:
    """Debit ``amount``; raises InsufficientFunds (and writes nothing) if the balance is short."""
    return post(
        conn,
        "spend",
        user_id,
        amount,
        asset=asset,
        idempotency_key=idempotency_key,
        actor=actor,
        reason=reason,
    )


def post(
    conn: Connection,
    kind: PostingKind,
    user_id: str,
    amount: int,
    *,
    asset: str,
    idempotency_key: str,
    actor: str,
    reason: str | None = None,
) -> Receipt:
    """Post a top-up, bonus or spend.

    The same ``idempotency_key`` with the same request returns the first posting's receipt
    with ``replayed=True`` and writes nothing; with a different request it raises
    IdempotencyConflict.
    """
    if kind not in ("topup", "bonus", "spend"):
        raise InvalidInput(f"unknown posting kind {kind!r}")
    params = (
        kind,
        validation.user_id(user_id),
        validation.asset_code(asset),
        validation.amount(amount),
        validation.idempotency_key(idempotency_key),
        validation.reason(reason, required=kind == "bonus"),
        validation.actor(actor),
    )
    return _call(conn, POST_SQL, params)


def reverse(
    conn: Connection,
    transaction_id: int,
    *,
    idempotency_key: str,
    actor: str,
    reason: str,
) -> Receipt:
    """Post the mirror image of a top-up, bonus or spend. A reason is required.

    Raises AlreadyReversed when it was reversed before (or is itself a reversal), and
    InsufficientFunds when the user has already spent the credit being reversed.
    """
    params = (
        validation.transaction_id(transaction_id),
        validation.idempotency_key(idempotency_key),
        validation.reason(reason, required=True),
        validation.actor(actor),
    )
    return _call(conn, REVERSE_SQL, params)


def _call(conn: Connection, sql: str, params: tuple[object, ...]) -> Receipt:
    for _ in range(_CLAIM_ATTEMPTS):
        try:
            with (
                translated(),
                _undo_scope(conn),
                conn.cursor(row_factory=class_row(Receipt)) as cursor,
            ):
                receipt = cursor.execute(sql, params, prepare=True).fetchone()
        except KeyClaimedConcurrently:
            continue
        assert receipt is not None
        return receipt
    raise RuntimeError("idempotency key kept being claimed concurrently; this is a bug")


def _undo_scope(conn: Connection) -> AbstractContextManager[object]:
    """Inside a caller's transaction (a dry run, a batch), a failed call must not abort the
    whole transaction: give it a savepoint. On an idle autocommit connection the statement
    is its own transaction already, and a savepoint would cost round trips."""
    if conn.info.transaction_status == TransactionStatus.IDLE:
        return nullcontext()
    return conn.transaction()
