"""Exit codes: stable, documented, one per kind of outcome a script branches on."""

from __future__ import annotations

from enum import IntEnum

from walletctl import errors


class ExitCode(IntEnum):
    OK = 0
    """Done (a replayed posting is done too: it says so on stderr and in --json)."""
    UNEXPECTED = 1
    """A bug or an environment failure walletctl has no name for."""
    INVALID_INPUT = 2
    """Usage error or invalid input: bad amount, id, date, URL, option."""
    INSUFFICIENT_FUNDS = 3
    """The spend (or reversal of a credit) would take a balance below zero."""
    NOT_FOUND = 4
    """The user, asset or transaction does not exist."""
    CONFLICT = 5
    """Idempotency conflict: the key was used before for a different request. Also a
    transaction reversed before, an asset code that is taken, or a request already decided
    the other way."""
    DATABASE_UNAVAILABLE = 6
    """The database is unreachable, or its schema is behind (run `walletctl db upgrade`)."""
    RECONCILE_FAILED = 7
    """reconcile found a discrepancy."""
    REFUSED = 8
    """Refused by policy: confirmation needed (--yes), a bulk total above --max-total,
    another run holding the file's lock, a frozen user, an issuance budget exceeded, an
    expired request."""
    PARTIAL = 9
    """A bulk file was processed, but some rows were not posted (see the report)."""
    NOT_PERMITTED = 10
    """The database role logged in may not do this (walletctl db grant ROLE --as KIND)."""
    BUSY = 11
    """Busy (deadlock, lock or statement timeout, serialization failure): nothing was
    written; retrying with the same key is safe."""
    STANDBY_BEHIND = 12
    """The standby a report would read is further behind than --max-lag (or cannot tell
    how far): nothing was read; run again later, or with --primary."""
    REPORT_NOT_WRITTEN = 13
    """A bulk file was posted (its summary is printed) but its --report could not be
    written; running the same file again replays its rows and writes the report."""


EXIT_CODE_HELP = "\n".join(
    f"{code.value}  {code.name.lower().replace('_', ' ')}" for code in ExitCode
)


def exit_code_for(error: BaseException) -> ExitCode:
    """The one mapping from walletctl's errors to exit codes."""
    match error:
        case errors.InsufficientFunds():
            return ExitCode.INSUFFICIENT_FUNDS
        case errors.NotFound():
            return ExitCode.NOT_FOUND
        case (
            errors.IdempotencyConflict()
            | errors.AlreadyReversed()
            | errors.AlreadyExists()
            | errors.AlreadyDecided()
        ):
            return ExitCode.CONFLICT
        case errors.NotPermitted():
            return ExitCode.NOT_PERMITTED
        case errors.Busy():
            return ExitCode.BUSY
        case errors.StandbyTooFarBehind():
            return ExitCode.STANDBY_BEHIND
        case errors.OutputNotWritten():
            return ExitCode.REPORT_NOT_WRITTEN
        case errors.ReconcileFailed():
            return ExitCode.RECONCILE_FAILED
        case errors.DatabaseUnavailable() | errors.SchemaOutOfDate():
            return ExitCode.DATABASE_UNAVAILABLE
        case errors.Refused():
            return ExitCode.REFUSED
        case errors.InvalidInput():
            return ExitCode.INVALID_INPUT
        case _:
            return ExitCode.UNEXPECTED


ALWAYS = (ExitCode.OK, ExitCode.UNEXPECTED, ExitCode.INVALID_INPUT)
"""What any command can return."""
DATABASE = (ExitCode.DATABASE_UNAVAILABLE, ExitCode.NOT_PERMITTED, ExitCode.BUSY)
"""What any command that talks to the database can return, besides ALWAYS."""


def epilog(*codes: ExitCode, database: bool = True) -> str:
    """The 'Exit codes' paragraph of a command's --help: every code it can return."""
    chosen = set(ALWAYS) | set(codes) | (set(DATABASE) if database else set())
    return "Exit codes: " + ", ".join(
        f"{code.value} {code.name.lower().replace('_', ' ')}" for code in sorted(chosen)
    )


def error_name(code: int) -> str:
    """The name of an exit code in a JSON error (``not_found``)."""
    try:
        return ExitCode(code).name.lower()
    except ValueError:
        return "unexpected"
