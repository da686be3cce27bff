"""The typed errors of walletctl. The core raises them; the CLI maps each to an exit code."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from walletctl.core.reconcile import ReconcileReport


class WalletError(Exception):
    """Base of every error walletctl raises on purpose. The message is one line for a person."""


class InvalidInput(WalletError):
    """A request that can never succeed as written: a malformed id, key, reason, date or URL."""


class InvalidAmount(InvalidInput):
    """An amount that is not a positive whole number within bigint, or a balance that would
    overflow."""


class WrongPartition(InvalidInput):
    """A database connected to directly is a partition of a cluster that is not the user's:
    creating the user here would split its credits over two partitions (WL024). Post through
    the proxy, or on ``partition`` (the user's) directly."""

    def __init__(self, message: str, *, partition: int | None) -> None:
        super().__init__(message)
        self.partition = partition


class InsufficientFunds(WalletError):
    """The spend (or the reversal of a credit) would take the user's balance below zero."""

    def __init__(self, message: str, *, balance: int, requested: int) -> None:
        super().__init__(message)
        self.balance = balance
        self.requested = requested


class NotFound(WalletError):
    """Something the request names does not exist."""


class UserNotFound(NotFound):
    pass


class AssetNotFound(NotFound):
    pass


class TransactionNotFound(NotFound):
    pass


class IdempotencyConflict(WalletError):
    """The idempotency key was already used for a different request."""

    def __init__(self, message: str, *, transaction_id: int) -> None:
        super().__init__(message)
        self.transaction_id = transaction_id


class AlreadyReversed(WalletError):
    """The transaction was reversed before (by another key), or is itself a reversal."""

    def __init__(self, message: str, *, transaction_id: int | None) -> None:
        super().__init__(message)
        self.transaction_id = transaction_id


class AlreadyExists(WalletError):
    """An asset code that is taken."""


class NotPermitted(WalletError):
    """The role logged in lacks the privilege: it is not a member of the walletctl role that
    may do this (walletctl db grant). ``login`` names the role when it is known (the error
    comes from a query, which does not say who ran it: the connection does)."""

    def __init__(self, message: str, *, login: str | None = None) -> None:
        self.reason = message
        self.login = login
        super().__init__(message if login is None else f"{message} (logged in as {login})")

    def for_login(self, login: str) -> NotPermitted:
        """The same refusal, naming the role that was refused."""
        return NotPermitted(self.reason, login=login)


class Busy(WalletError):
    """A deadlock, a lock or statement timeout, or a serialization failure: nothing was
    written, and retrying with the same idempotency key is safe."""


class DatabaseUnavailable(WalletError):
    """The database cannot be reached, or the embedded server cannot be started."""


class UnsafeSearchPath(DatabaseUnavailable):
    """The session's search_path reaches a schema other than pg_catalog and public, where a
    table or function named like walletctl's would be found first: refused before any
    query of walletctl's runs."""


class ReadOnlyServer(DatabaseUnavailable):
    """The server refused a write because it is read-only: a standby named where the primary
    belongs. Nothing was written."""


class StandbyTooFarBehind(WalletError):
    """The standby a report would read from is further behind its primary than --max-lag
    allows, or cannot tell how far behind it is."""


class OutputNotWritten(WalletError):
    """The work was done (a bulk file posted), but a file it was asked to write (--report)
    could not be written: a failure after the fact, which must not read as 'nothing
    happened'."""


class SchemaOutOfDate(WalletError):
    """The database schema is behind this walletctl (or was never created)."""


class Refused(WalletError):
    """Refused by policy: an amount above the confirmation threshold without --yes, a bulk
    file above --max-total."""


class ConcurrentRun(Refused):
    """Another process holds the lock this operation needs (a bulk file already running)."""


class UserFrozen(Refused):
    """The user is frozen (walletctl user freeze): no spends or credits; reversals post."""


class BudgetExceeded(Refused):
    """The posting would take the caller's (or, for an approval, the requester's) issuance
    budget for the asset past its daily limit."""

    def __init__(self, message: str, *, remaining: int) -> None:
        super().__init__(message)
        self.remaining = remaining


class ApprovalRequired(Refused):
    """A top-up or bonus above its asset's approval threshold: it must be filed as a request
    and approved by another identity (walletctl files it; the SQL API refuses it)."""

    def __init__(self, message: str, *, threshold: int) -> None:
        super().__init__(message)
        self.threshold = threshold


class RequestExpired(Refused):
    """The request was not approved in time."""


class RequestNotFound(NotFound):
    pass


class AlreadyDecided(WalletError):
    """The request was already approved or rejected, the other way."""


class ReconcileFailed(WalletError):
    """reconcile found a discrepancy, so seal refused to seal: ``report`` says which checks
    failed and names their first rows."""

    def __init__(self, message: str, *, report: ReconcileReport) -> None:
        super().__init__(message)
        self.report = report
