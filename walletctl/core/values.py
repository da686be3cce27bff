"""Rules about values that every output shares, importable without the database stack
(the CLI's help and views load this, not psycopg)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

TransactionKind = Literal["topup", "bonus", "spend", "reversal"]


def iso_time(moment: datetime) -> str:
    """A time as every walletctl output writes it, whatever the server's or the session's
    time zone: ISO 8601, in UTC, with microseconds (fixed width, so text order is time
    order): 2026-11-01T12:00:00.000000+00:00."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def balance_change(
    kind: TransactionKind | str, amount: int, reversed_kind: str | None = None
) -> int:
    """What a posting of ``amount`` (as stored, positive) does to the user's balance: a
    top-up or bonus adds, a spend takes away, a reversal does the opposite of what it
    reverses (``reversed_kind``). The one rule every view's signed amount follows."""
    if kind == "reversal":
        if reversed_kind is None:
            raise ValueError("the sign of a reversal depends on what it reverses")
        return -balance_change(reversed_kind, amount)
    return -amount if kind == "spend" else amount
