"""Postings under real concurrency: many connections, started together, to one database
or (the ``ledger`` fixture's second parameter) through a PL/Proxy proxy to four
partitions."""

from __future__ import annotations

import multiprocessing
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from walletctl.core import assets, posting
from walletctl.core.models import Receipt
from walletctl.errors import AlreadyReversed, InsufficientFunds, WalletError

from .conftest import Ledger, ledgers_and_pgbouncer, library_connection
from .helpers import assert_ledger_consistent, balance_of

Conn = psycopg.Connection[Any]
OPS = {"on_behalf_of": "ops", "asset": "GOLD"}


def _run_together(workers: int, job: Callable[[int], Any]) -> list[Any]:
    """Run job(0..workers-1) in threads, each released at the same instant."""
    barrier = threading.Barrier(workers)

    def released(index: int) -> Any:
        barrier.wait()
        return job(index)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(released, range(workers)))


@ledgers_and_pgbouncer
def test_concurrent_spends_of_ten_on_ten_times_fewer(ledger: Ledger) -> None:
    """50 spends of 10 on 200 (16 through a proxy, on 60): exactly as many post as fit."""
    workers = ledger.workers(50)
    fits = workers * 2 // 5
    posting.topup(ledger.conn, "alice", 10 * fits, idempotency_key="fund", **OPS)
    connections = [ledger.connect() for _ in range(workers)]

    def spend(index: int) -> str:
        try:
            posting.spend(connections[index], "alice", 10, idempotency_key=f"s{index}", **OPS)
        except InsufficientFunds:
            return "insufficient"
        return "posted"

    outcomes = _run_together(workers, spend)
    assert outcomes.count("posted") == fits
    assert outcomes.count("insufficient") == workers - fits
    assert ledger.balance_of("alice") == 0
    assert ledger.count("SELECT count(*) FROM transactions WHERE kind = 'spend'") == fits
    ledger.assert_consistent()


@ledgers_and_pgbouncer
def test_racing_identical_keys_post_once_and_all_get_its_receipt(ledger: Ledger) -> None:
    workers = ledger.workers(32)
    connections = [ledger.connect() for _ in range(workers)]

    def topup(index: int) -> Receipt:
        return posting.topup(connections[index], "alice", 25, idempotency_key="same", **OPS)

    receipts = _run_together(workers, topup)
    assert len({receipt.transaction_id for receipt in receipts}) == 1
    assert sum(not receipt.replayed for receipt in receipts) == 1
    assert {receipt.balance_after for receipt in receipts} == {25}
    assert ledger.count("SELECT count(*) FROM transactions") == 1
    assert ledger.balance_of("alice") == 25
    ledger.assert_consistent()


@ledgers_and_pgbouncer
def test_racing_identical_keys_on_an_existing_user_with_spends(ledger: Ledger) -> None:
    posting.topup(ledger.conn, "alice", 1000, idempotency_key="fund", **OPS)
    workers = ledger.workers(32)
    connections = [ledger.connect() for _ in range(workers)]

    def spend(index: int) -> Receipt:
        return posting.spend(connections[index], "alice", 7, idempotency_key="once", **OPS)

    receipts = _run_together(workers, spend)
    assert len({receipt.transaction_id for receipt in receipts}) == 1
    assert ledger.balance_of("alice") == 993
    ledger.assert_consistent()


def _race_in_process(url: str, pooled: bool, barrier: Any, results: Any) -> None:
    with library_connection(url, pooled) as connection:
        barrier.wait()
        receipt = posting.topup(connection, "carol", 9, idempotency_key="proc", **OPS)
        results.put((receipt.transaction_id, receipt.replayed))


@ledgers_and_pgbouncer
def test_racing_identical_keys_from_separate_processes(ledger: Ledger) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(8)
    results = context.Queue()
    processes = [
        context.Process(
            target=_race_in_process, args=(ledger.post_url, ledger.pooled, barrier, results)
        )
        for _ in range(8)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    outcomes = [results.get(timeout=5) for _ in processes]
    assert len({transaction_id for transaction_id, _ in outcomes}) == 1
    assert sorted(replayed for _, replayed in outcomes) == [False] + [True] * 7
    assert ledger.count("SELECT count(*) FROM transactions") == 1


def test_racing_reversals_of_one_transaction_post_one(ledger: Ledger) -> None:
    topup = posting.topup(ledger.conn, "alice", 100, idempotency_key="t", **OPS)
    connections = [ledger.connect() for _ in range(16)]

    def reverse(index: int) -> str:
        try:
            posting.reverse(
                connections[index],
                topup.transaction_id,
                idempotency_key=f"r{index}",
                on_behalf_of="ops",
                reason="race",
            )
        except AlreadyReversed:
            return "already"
        return "posted"

    outcomes = _run_together(16, reverse)
    assert outcomes.count("posted") == 1
    assert ledger.balance_of("alice") == 0
    ledger.assert_consistent()


@dataclass
class Outcome:
    receipts: list[Receipt]
    refusals: int


def test_mixed_workload_keeps_every_invariant(ledger: Ledger) -> None:
    """16 workers x 1,000 random top-ups, bonuses, spends and reversals over 100 users
    (through a proxy: 8 x 400, on four partitions)."""
    assets.add_asset(ledger.conn, "POINTS", "Reward Points")
    workers, operations, users = 16, 1000, 100
    if ledger.proxied:
        workers, operations = 8, 400
    connections = [ledger.connect() for _ in range(workers)]

    def work(index: int) -> Outcome:
        rng = random.Random(index)
        mine: list[Receipt] = []
        refusals = 0
        connection = connections[index]
        for step in range(operations):
            user = f"user-{rng.randrange(users)}"
            asset = rng.choice(["GOLD", "POINTS"])
            key = f"w{index}-{step}"
            roll = rng.random()
            try:
                if roll < 0.35:
                    receipt = posting.topup(
                        connection,
                        user,
                        rng.randint(1, 500),
                        asset=asset,
                        idempotency_key=key,
                        on_behalf_of="load",
                    )
                elif roll < 0.5:
                    receipt = posting.bonus(
                        connection,
                        user,
                        rng.randint(1, 100),
                        asset=asset,
                        idempotency_key=key,
                        on_behalf_of="load",
                        reason="promo",
                    )
                elif roll < 0.9:
                    receipt = posting.spend(
                        connection,
                        user,
                        rng.randint(1, 400),
                        asset=asset,
                        idempotency_key=key,
                        on_behalf_of="load",
                    )
                elif mine:
                    target = rng.choice(mine)
                    receipt = posting.reverse(
                        connection,
                        target.transaction_id,
                        idempotency_key=key,
                        on_behalf_of="load",
                        reason="undo",
                    )
                else:
                    continue
            except WalletError:
                refusals += 1
                continue
            # Retrying the same request now and then must change nothing.
            if rng.random() < 0.05:
                again = (
                    posting.post(
                        connection,
                        receipt.kind,
                        receipt.user_id,
                        receipt.amount,
                        asset=receipt.asset,
                        idempotency_key=key,
                        on_behalf_of="load",
                        reason="promo",
                    )
                    if receipt.kind != "reversal"
                    else None
                )
                assert again is None or (
                    again.replayed and again.transaction_id == receipt.transaction_id
                )
            mine.append(receipt)
        return Outcome(mine, refusals)

    outcomes = _run_together(workers, work)
    reported = {
        receipt.transaction_id: receipt for outcome in outcomes for receipt in outcome.receipts
    }
    assert sum(len(outcome.receipts) for outcome in outcomes) == len(reported)
    in_ledger = {
        row[0]: row[1:]
        for row in ledger.rows(
            "SELECT t.id, t.kind, a.external_id, s.code, t.amount, t.idempotency_key "
            "FROM transactions t JOIN accounts a ON a.id = t.account_id "
            "JOIN asset_types s ON s.id = t.asset_id WHERE t.idempotency_key <> 'fund'"
        )
    }
    # Every reported success is in the ledger as reported, and nothing else is.
    assert set(in_ledger) == set(reported)
    for transaction_id, receipt in reported.items():
        assert in_ledger[transaction_id] == (
            receipt.kind,
            receipt.user_id,
            receipt.asset,
            receipt.amount,
            receipt.idempotency_key,
        )
    assert sum(outcome.refusals for outcome in outcomes) > 0  # the workload did hit refusals
    ledger.assert_consistent()


@pytest.mark.parametrize("users", [1, 2])
def test_opposite_postings_on_few_users_never_deadlock(
    conn: Conn, connect: Any, users: int
) -> None:
    """Credits and debits interleaved on the same rows: each posting takes one lock."""
    for user in range(users):
        posting.topup(conn, f"u{user}", 10_000, idempotency_key=f"fund{user}", **OPS)
    connections = [connect() for _ in range(8)]

    def work(index: int) -> int:
        done = 0
        for step in range(150):
            user = f"u{(index + step) % users}"
            if (index + step) % 2:
                posting.spend(connections[index], user, 3, idempotency_key=f"{index}.{step}", **OPS)
            else:
                posting.topup(connections[index], user, 3, idempotency_key=f"{index}.{step}", **OPS)
            done += 1
        return done

    assert sum(_run_together(8, work)) == 8 * 150
    assert sum(balance_of(conn, f"u{user}") for user in range(users)) == 10_000 * users
    assert_ledger_consistent(conn)
