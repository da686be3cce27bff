"""One place that turns the database's errors into walletctl's typed errors.

The SQL API raises SQLSTATEs of class WL (listed in walletctl/sql/rules.sql); the
constraints raise the standard ones, recognised by constraint name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import psycopg
from psycopg import errors as pg

from walletctl.errors import (
    AlreadyDecided,
    AlreadyExists,
    AlreadyReversed,
    ApprovalRequired,
    AssetNotFound,
    BudgetExceeded,
    Busy,
    DatabaseUnavailable,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidInput,
    NotPermitted,
    ReadOnlyServer,
    RequestExpired,
    RequestNotFound,
    TransactionNotFound,
    UserFrozen,
    UserNotFound,
    WalletError,
    WrongPartition,
)

INSUFFICIENT_FUNDS = "WL001"
USER_NOT_FOUND = "WL002"
ASSET_NOT_FOUND = "WL003"
TRANSACTION_NOT_FOUND = "WL004"
IDEMPOTENCY_CONFLICT = "WL005"
ALREADY_REVERSED = "WL006"
REVERSAL_OF_REVERSAL = "WL007"
KEY_CLAIMED_CONCURRENTLY = "WL008"
INVALID_AMOUNT = "WL009"
APPEND_ONLY = "WL010"
UNBALANCED_ENTRIES = "WL011"
MISSHAPEN_TRANSACTION = "WL012"
BALANCE_DRIFT = "WL013"
DUPLICATED_LINE = "WL014"
# Operator controls (walletctl/sql/controls.sql).
USER_FROZEN = "WL015"
BUDGET_EXCEEDED = "WL016"
APPROVAL_REQUIRED = "WL017"
REQUEST_NOT_FOUND = "WL018"
OWN_REQUEST = "WL019"
ALREADY_DECIDED = "WL020"
NOT_A_REQUEST = "WL021"
REQUEST_EXPIRED = "WL022"
NOT_READ_COMMITTED = "WL023"
# A cluster's placement rule (walletctl/sql/rules.sql).
WRONG_PARTITION = "WL024"
FEATURE_NOT_SUPPORTED = "0A000"

# Nothing was written, and the same request may simply be sent again.
_BUSY_SQLSTATES = {
    "40001": "a serialization failure",
    "40P01": "a deadlock",
    "55P03": "a lock timeout",
    "57014": "a statement timeout or cancellation",
    "25P03": "an idle-in-transaction timeout",
}

# Which walletctl roles may call what a refusal names (walletctl/sql/privileges.sql).
_WHO_MAY = {
    "walletctl_post": "walletctl_operator or walletctl_service",
    "walletctl_reverse": "walletctl_operator or walletctl_service",
    "walletctl_add_asset": "walletctl_operator",
    "walletctl_post_batch": "walletctl_batch or walletctl_service",
    "walletctl_seal": "walletctl_batch",
    "walletctl_lock_seal": "walletctl_batch",
    "walletctl_lock_file": "walletctl_batch",
    "walletctl_request_credit": "walletctl_operator or walletctl_service",
    "walletctl_approve_request": "walletctl_approver",
    "walletctl_reject_request": "walletctl_approver",
    "walletctl_expire_requests": "walletctl_approver",
    "walletctl_set_approval": "walletctl_admin",
    "walletctl_set_budget": "walletctl_admin",
    "walletctl_freeze_user": "walletctl_admin",
    "walletctl_unfreeze_user": "walletctl_admin",
}
_READERS = (
    "walletctl_operator, walletctl_batch, walletctl_finance, walletctl_approver or walletctl_admin"
)


class KeyClaimedConcurrently(Exception):
    """Internal: another posting with the same key committed first; ask again."""


# PL/Proxy re-raises a partition's error on the proxy with its SQLSTATE, the message
# prefixed with the function and partition database, the detail with "Remote detail: ".
_PLPROXY_PREFIX = re.compile(r"^[\w.]+\(\d+\): \[[^\]]*\] REMOTE [A-Z]+: ")
_PLPROXY_DETAIL = "Remote detail: "
# PL/Proxy's own failures (a partition it cannot connect to, a connection lost or timed
# out): SQLSTATE XX000, "PL/Proxy function f(n): [partition db] what happened".
_PLPROXY_FAILURE = re.compile(r"^PL/Proxy function [\w.]+\(\d+\): \[([^\]]*)\] (?:\w+: )?(.*)")


def _int_detail(exc: psycopg.Error) -> int:
    detail = (exc.diag.message_detail or "").removeprefix(_PLPROXY_DETAIL)
    return int(detail) if detail.lstrip("-").isdigit() else 0


def translate(exc: psycopg.Error) -> Exception:
    """The typed error for a database error (the error itself when it has no meaning here)."""
    message = _PLPROXY_PREFIX.sub("", exc.diag.message_primary or str(exc).strip())
    code = exc.sqlstate
    if code == INSUFFICIENT_FUNDS:
        return InsufficientFunds(message, balance=_int_detail(exc), requested=0)
    if code == USER_NOT_FOUND:
        return UserNotFound(message)
    if code == ASSET_NOT_FOUND:
        return AssetNotFound(message)
    if code == TRANSACTION_NOT_FOUND:
        return TransactionNotFound(message)
    if code == IDEMPOTENCY_CONFLICT:
        return IdempotencyConflict(message, transaction_id=_int_detail(exc))
    if code == ALREADY_REVERSED:
        return AlreadyReversed(message, transaction_id=_int_detail(exc))
    if code == REVERSAL_OF_REVERSAL:
        return AlreadyReversed(message, transaction_id=None)
    if code == USER_FROZEN:
        return UserFrozen(message)
    if code == BUDGET_EXCEEDED:
        return BudgetExceeded(message, remaining=_int_detail(exc))
    if code == APPROVAL_REQUIRED:
        return ApprovalRequired(message, threshold=_int_detail(exc))
    if code == REQUEST_NOT_FOUND:
        return RequestNotFound(message)
    if code == OWN_REQUEST:
        return NotPermitted(f"not permitted: {message}")
    if code == ALREADY_DECIDED:
        return AlreadyDecided(message)
    if code == NOT_A_REQUEST:
        return InvalidInput(message)
    if code == REQUEST_EXPIRED:
        return RequestExpired(message)
    if code == NOT_READ_COMMITTED:
        return InvalidInput(f"refused by the database: {message}")
    if code == WRONG_PARTITION:
        detail = (exc.diag.message_detail or "").removeprefix(_PLPROXY_DETAIL)
        return WrongPartition(
            f"refused by the database: {message}",
            partition=int(detail) if detail.isdigit() else None,
        )
    if code == KEY_CLAIMED_CONCURRENTLY:
        return KeyClaimedConcurrently(message)
    if code in (INVALID_AMOUNT,) or isinstance(exc, pg.NumericValueOutOfRange):
        if isinstance(exc, pg.NumericValueOutOfRange):
            message = "the balance would exceed the largest amount a balance can hold (2^63-1)"
        return InvalidAmount(message)
    if isinstance(exc, pg.UniqueViolation):
        constraint = exc.diag.constraint_name
        if constraint == "uq_transactions_reverses":
            return AlreadyReversed(
                "the transaction was reversed by a concurrent reversal", transaction_id=None
            )
        if constraint == "uq_asset_types_code":
            return AlreadyExists("that asset code already exists")
    if isinstance(exc, pg.CheckViolation) or code in (
        UNBALANCED_ENTRIES,
        MISSHAPEN_TRANSACTION,
        BALANCE_DRIFT,
        DUPLICATED_LINE,
    ):
        return InvalidInput(f"refused by the database: {message}")
    if code == "25006":  # read_only_sql_transaction
        return ReadOnlyServer(
            f"the server refused to write: {message}. It is read-only (a standby?); postings, "
            "reversals, bulk files and seal go to the primary (--database-url). Nothing was "
            "written"
        )
    if code == "40001" and "conflict with recovery" in message:
        return Busy(
            f"busy: the standby cancelled the query to apply changes from its primary "
            f"({message}); run it again, or with --primary (hot_standby_feedback on the "
            "standby avoids this)"
        )
    if code == FEATURE_NOT_SUPPORTED and message.startswith("an atomic batch"):
        return InvalidInput(message)  # the proxy's walletctl_post_batch (proxy.sql)
    unreachable = _PLPROXY_FAILURE.match(message) if code == "XX000" else None
    if unreachable is not None:
        return DatabaseUnavailable(
            f"the proxy cannot reach partition database {unreachable.group(1)}: "
            f"{unreachable.group(2)} (if this was a posting, retry it with the same "
            "idempotency key)"
        )
    if code in _BUSY_SQLSTATES:
        return Busy(
            f"busy: {_BUSY_SQLSTATES[code]} ({message}); nothing was written, retrying with "
            "the same idempotency key is safe"
        )
    if isinstance(exc, pg.InsufficientPrivilege):
        return _not_permitted(exc, message)
    if isinstance(exc, psycopg.OperationalError) or _two_answers_to_a_command(exc):
        return DatabaseUnavailable(
            f"lost the database connection: {message} "
            "(if this was a posting, retry it with the same idempotency key)"
        )
    return exc


def _two_answers_to_a_command(exc: psycopg.Error) -> bool:
    """psycopg's complaint when COMMIT or ROLLBACK gets two answers, which is what PgBouncer
    sends when the server session under a client's transaction dies: the server's error,
    then its own ("server conn crashed?"), before it closes the client's connection."""
    return (
        isinstance(exc, psycopg.InternalError)
        and exc.sqlstate is None
        and str(exc).startswith("received ")
        and "results from command" in str(exc)
    )


def _not_permitted(exc: psycopg.Error, message: str) -> NotPermitted:
    # A query's error does not carry its connection (psycopg sets pgconn only on connect),
    # so the role is named here only when known; walletctl.database.connect names it
    # otherwise.
    login = exc.pgconn.user.decode() if exc.pgconn is not None and exc.pgconn.user else None
    needed = next(
        (roles for name, roles in _WHO_MAY.items() if message.endswith(f"function {name}")),
        _READERS if "for table" in message or "for function" in message else None,
    )
    hint = f"; it needs membership in {needed}" if needed else ""
    return NotPermitted(
        f"not permitted: {message}{hint} (walletctl db grant ROLE --as KIND)", login=login
    )


def raise_translated(exc: psycopg.Error, typed: Exception | None = None) -> NoReturn:
    """Raise the typed error for ``exc`` (``exc`` itself when it has no meaning here)."""
    typed = translate(exc) if typed is None else typed
    if typed is exc:
        raise exc
    if isinstance(typed, WalletError | KeyClaimedConcurrently):
        raise typed from None
    raise typed from exc


@contextmanager
def translated() -> Iterator[None]:
    """Run a block, raising walletctl's typed errors for the database's."""
    try:
        yield
    except psycopg.Error as exc:
        raise_translated(exc)
