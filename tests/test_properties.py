"""Property-based: random sequences of postings agree with a simple model, and the ledger
keeps every invariant after each sequence."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walletctl.core import assets, balances, posting
from walletctl.core.models import Receipt
from walletctl.errors import (
    AlreadyReversed,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    UserNotFound,
)

from .conftest import truncate_everything
from .helpers import assert_ledger_consistent

USERS = ["ann", "ben", "cy"]
ASSETS = ["GOLD", "POINTS"]
KEYS = [f"k{index}" for index in range(12)]  # few keys, so they collide on purpose

operation = st.one_of(
    st.tuples(
        st.sampled_from(["topup", "bonus", "spend"]),
        st.sampled_from(USERS),
        st.sampled_from(ASSETS),
        st.one_of(st.integers(1, 1000), st.just(2**62)),
        st.sampled_from(KEYS),
    ),
    st.tuples(st.just("reverse"), st.integers(0, 30), st.sampled_from(KEYS)),
)


@dataclass
class Model:
    held: dict[tuple[str, str], int] = field(default_factory=dict)
    users: set[str] = field(default_factory=set)
    requests: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # key -> request
    receipts: dict[str, Receipt] = field(default_factory=dict)  # key -> first receipt
    posted: list[Receipt] = field(default_factory=list)
    reversed: dict[int, int] = field(default_factory=dict)  # target -> reversal


def _apply(conn: psycopg.Connection[Any], model: Model, op: tuple[Any, ...]) -> None:
    if op[0] == "reverse":
        _, pick, key = op
        if not model.posted:
            return
        target = model.posted[pick % len(model.posted)]
        request: tuple[Any, ...] = ("reverse", target.transaction_id)
        try:
            receipt = posting.reverse(
                conn, target.transaction_id, idempotency_key=key, on_behalf_of="prop", reason="undo"
            )
        except IdempotencyConflict:
            assert key in model.requests and model.requests[key] != request
            return
        except AlreadyReversed:
            assert target.kind == "reversal" or target.transaction_id in model.reversed
            return
        except InsufficientFunds:
            assert model.held.get((target.user_id, target.asset), 0) < target.amount
            assert target.kind in ("topup", "bonus")
            return
        delta = target.amount if target.kind == "spend" else -target.amount
        user, asset = target.user_id, target.asset
    else:
        kind, user, asset, amount, key = op
        request = (kind, user, asset, amount)
        try:
            receipt = posting.post(
                conn,
                kind,
                user,
                amount,
                asset=asset,
                idempotency_key=key,
                on_behalf_of="prop",
                reason="because",
            )
        except IdempotencyConflict:
            assert key in model.requests and model.requests[key] != request
            return
        except InsufficientFunds:
            assert kind == "spend" and model.held.get((user, asset), 0) < amount
            return
        except UserNotFound:
            assert kind == "spend" and user not in model.users
            return
        except InvalidAmount:  # the balance would pass 2^63-1
            assert model.held.get((user, asset), 0) + amount > 2**63 - 1
            return
        delta = -amount if kind == "spend" else amount

    if key in model.requests:
        assert receipt.replayed and model.requests[key] == request
        assert receipt == replace(model.receipts[key], replayed=True)
        return
    assert not receipt.replayed
    model.requests[key] = request
    model.receipts[key] = receipt
    model.posted.append(receipt)
    model.users.add(user)
    model.held[(user, asset)] = model.held.get((user, asset), 0) + delta
    assert receipt.balance_after == model.held[(user, asset)]
    if receipt.reverses is not None:
        model.reversed[receipt.reverses] = receipt.transaction_id


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=st.lists(operation, min_size=1, max_size=40))
def test_random_operation_sequences_keep_the_model_and_the_invariants(
    database_url: str, operations: list[tuple[Any, ...]]
) -> None:
    truncate_everything(database_url)
    model = Model()
    with psycopg.connect(database_url, autocommit=True) as conn:
        for code in ASSETS:
            assets.add_asset(conn, code, code.title())
        for op in operations:
            _apply(conn, model, op)
        for user in model.users:
            held = {row.asset: row.balance for row in balances.balances(conn, user)}
            assert held == {asset: model.held.get((user, asset), 0) for asset in ASSETS}
        assert_ledger_consistent(conn)
