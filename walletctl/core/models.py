"""The plain values the core returns. No behaviour beyond formatting-free data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg

from walletctl.core.values import balance_change, iso_time

PostingKind = Literal["topup", "bonus", "spend"]
TransactionKind = Literal["topup", "bonus", "spend", "reversal"]
TREASURY_ACCOUNT_ID = 0
__all__ = ["balance_change", "iso_time"]  # re-exported: defined without psycopg


Connection = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a posting did, or, when ``replayed``, what the first posting with its key did."""

    transaction_id: int
    kind: TransactionKind
    user_id: str
    asset: str
    amount: int
    balance_after: int
    created_at: datetime
    replayed: bool
    reverses: int | None
    idempotency_key: str
    actor: str
    """The database identity that posted it (session_user)."""
    on_behalf_of: str | None
    """Whom the actor said it acted for (--actor), if anyone."""


@dataclass(frozen=True, slots=True)
class Asset:
    code: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Balance:
    user_id: str
    asset: str
    balance: int
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class Outstanding:
    """The Treasury's side of one asset: what users hold in total (the liability)."""

    asset: str
    outstanding: int
    holders: int
    treasury_balance: int


@dataclass(frozen=True, slots=True)
class StatementLine:
    entry_id: int
    transaction_id: int
    created_at: datetime
    kind: TransactionKind
    asset: str
    amount: int
    balance_after: int
    reason: str | None
    actor: str
    on_behalf_of: str | None
    idempotency_key: str
    reverses: int | None


@dataclass(frozen=True, slots=True)
class StatementTotal:
    """What the lines a statement's filters select add up to, for one asset."""

    asset: str
    entries: int
    amount: int


@dataclass(frozen=True, slots=True)
class Entry:
    entry_id: int
    account: str
    amount: int
    balance_after: int | None


@dataclass(frozen=True, slots=True)
class TransactionDetail:
    transaction_id: int
    kind: TransactionKind
    user_id: str
    asset: str
    amount: int
    """As stored: positive, whatever the kind."""
    user_amount: int
    """What it did to the user's balance: negative for a spend or the reversal of a credit."""
    idempotency_key: str
    reason: str | None
    actor: str
    on_behalf_of: str | None
    reverses: int | None
    reversed_by: int | None
    created_at: datetime
    entries: tuple[Entry, ...]

    @property
    def entries_sum(self) -> int:
        return sum(entry.amount for entry in self.entries)


@dataclass(frozen=True, slots=True)
class UserSummary:
    user_id: str
    created_at: datetime
    balances: tuple[Balance, ...]
    """One per asset type, held or not (0), in code order: the shape `balance` has."""
    transactions: int | None
    """How many entries the user has (None when not asked for: ``balance --all``)."""
    frozen: bool = False
    """Frozen (walletctl user freeze): no spends or credits until unfrozen."""
