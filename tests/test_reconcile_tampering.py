"""What a superuser can still do with the triggers off (SET session_replication_role =
replica), and that reconcile (the default one, run by cron, and --full) catches it and names
the account or the transaction; and that seal seals only what its reconcile saw.

Each case here is one the default reconcile, --full or seal let through before (issue 11).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from walletctl.core import balances, posting, seal
from walletctl.core.export import account_name, export
from walletctl.core.reconcile import reconcile
from walletctl.errors import ReconcileFailed

from .cli_helpers import Cli
from .test_finance import _hledger_balances

Conn = psycopg.Connection[Any]
OPS = {"on_behalf_of": "ops", "asset": "GOLD"}


def _tamper(url: str, sql: str, params: Any = None) -> None:
    """What a superuser with psql could do: switch the triggers off, change the ledger."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SET session_replication_role = replica")
        admin.execute(sql, params)


def _failed(report: Any) -> dict[str, tuple[str, ...]]:
    return {check.name: check.examples for check in report.checks if not check.passed}


def _reconcile_cli(url: str, *args: str) -> tuple[int, dict[str, Any], str]:
    result = Cli(url)("reconcile", "--json", *args)
    body = json.loads(result.stdout)
    failed = {c["check"]: c["examples"] for c in body["checks"] if c["status"] == "FAIL"}
    return result.exit_code, failed, result.stderr


def _forge_topup(
    url: str, user: str, amount: int, at: datetime, balance_after: int, transaction_id: Any = None
) -> int:
    """A top-up inserted by a superuser past every rule, at a time of their choosing, with
    the balance_after they choose; returns its transaction id."""
    with psycopg.connect(url, autocommit=True) as admin, admin.transaction():
        admin.execute("SET LOCAL session_replication_role = replica")
        row = admin.execute(
            "INSERT INTO transactions (id, kind, account_id, asset_id, amount, idempotency_key, "
            "actor, created_at) "
            "SELECT coalesce(%s, nextval(pg_get_serial_sequence('transactions', 'id'))), "
            "'topup', a.id, 1, %s, 'forged-' || %s, 'postgres', %s "
            "FROM accounts a WHERE a.external_id = %s RETURNING id, account_id",
            (transaction_id, amount, str(at), at, user),
        ).fetchone()
        assert row is not None
        admin.execute(
            "INSERT INTO ledger_entries (transaction_id, account_id, asset_id, amount, "
            "balance_after, created_at) VALUES (%s, %s, 1, %s, %s, %s), (%s, 0, 1, %s, NULL, %s)",
            (row[0], row[1], amount, balance_after, at, row[0], -amount, at),
        )
        return int(row[0])


def _set_balance(url: str, user: str, balance: int) -> None:
    _tamper(
        url,
        "UPDATE balances SET balance = %s WHERE asset_id = 1 AND account_id = "
        "(SELECT id FROM accounts WHERE external_id = %s)",
        (balance, user),
    )


# 1. Two cached balances moved by +50 and -50 above the last seal -------------------------


def test_two_caches_moved_by_plus_and_minus_50_above_the_seal_are_named(
    conn: Conn, clean_db: str
) -> None:
    for user in ("alice", "bob", "carol"):
        posting.topup(conn, user, 100, idempotency_key=f"fund-{user}", **OPS)
    assert seal.seal(conn) is not None
    posting.topup(conn, "carol", 5, idempotency_key="later", **OPS)  # something new
    # Totals unchanged, and neither user has posted since the seal.
    _set_balance(clean_db, "alice", 150)
    _set_balance(clean_db, "bob", 50)

    code, failed, _ = _reconcile_cli(clean_db)
    assert code == 7
    assert list(failed) == ["cached_balances_match_ledger"]
    assert failed["cached_balances_match_ledger"] == (
        "alice/GOLD: cached 150, ledger 100; bob/GOLD: cached 50, ledger 100"
    )
    assert _failed(reconcile(conn, full=True)).keys() == {"cached_balances_match_ledger"}

    # seal refuses, so the forged 50 is never sealed as if it were right.
    refused = Cli(clean_db)("seal", "--json")
    assert refused.exit_code == 7, refused.stdout + refused.stderr
    assert "alice/GOLD: cached 150, ledger 100" in refused.stderr
    with psycopg.connect(clean_db) as admin:
        assert admin.execute("SELECT count(*) FROM seal_checkpoints").fetchone() == (1,)


# 2. A back-dated top-up whose balance_after agrees with the cache ------------------------


def _alice_spends_between(conn: Conn) -> tuple[Any, Any]:
    """alice: a top-up of 100, then a spend of 30; bob: a top-up of 100."""
    first = posting.topup(conn, "alice", 100, idempotency_key="a1", **OPS)
    time.sleep(0.01)
    second = posting.spend(conn, "alice", 30, idempotency_key="a2", **OPS)
    posting.topup(conn, "bob", 100, idempotency_key="b1", **OPS)
    return first, second


def _between(first: Any, second: Any) -> datetime:
    moment: datetime = first.created_at + (second.created_at - first.created_at) / 2
    return moment


def _three_answers(conn: Conn, tmp_path: Path) -> tuple[int, int, int]:
    """alice's balance by the cache, by --as-of now (the last entry in time order), and by
    hledger reading the export."""
    cached = balances.balances(conn, "alice", asset="GOLD")[0].balance
    as_of = balances.balances(conn, "alice", asset="GOLD", as_of=datetime.now(UTC))[0].balance
    journal = tmp_path / "ledger.journal"
    with journal.open("w", encoding="utf-8") as out:
        export(conn, out, "ledger")
    # The journal's user accounts are liabilities (README "Exports"): minus what they hold.
    return cached, as_of, -_hledger_balances(journal)[(account_name("alice"), "GOLD")]


@pytest.mark.skipif(shutil.which("hledger") is None, reason="hledger is not installed")
def test_a_back_dated_topup_consistent_with_the_cache_fails_the_full_reconcile(
    conn: Conn, clean_db: str, tmp_path: Path
) -> None:
    first, second = _alice_spends_between(conn)
    assert _three_answers(conn, tmp_path) == (70, 70, 70)
    assert reconcile(conn, full=True).passed

    # +50 between the top-up and the spend, with the balance_after the cache ends on: the
    # multiset of running balances still adds up, their order does not.
    forged = _forge_topup(clean_db, "alice", 50, _between(first, second), balance_after=120)
    _set_balance(clean_db, "alice", 120)
    # balance says 120, --as-of now 70 (the last entry in time order), hledger 120.
    assert _three_answers(conn, tmp_path) == (120, 70, 120)

    report = reconcile(conn, full=True)
    assert report.mode == "full"
    failed = _failed(report)
    assert list(failed) == ["cached_balances_match_ledger", "running_balances_consistent"]
    assert failed["running_balances_consistent"][0] == (
        f"alice/GOLD: transaction {forged} (entry {_user_entry(clean_db, forged)}) does not "
        "continue the balance before it"
    )
    assert failed["cached_balances_match_ledger"] == ("alice/GOLD: cached 120, ledger 70",)
    # Before any seal the default reconcile is the full one: the same findings.
    assert _failed(reconcile(conn)) == failed


def _user_entry(url: str, transaction_id: int) -> int:
    with psycopg.connect(url) as admin:
        row = admin.execute(
            "SELECT id FROM ledger_entries WHERE transaction_id = %s AND account_id <> 0",
            (transaction_id,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_back_dated_topup_after_the_seal_fails_the_default_reconcile(
    conn: Conn, clean_db: str
) -> None:
    first, second = _alice_spends_between(conn)
    assert seal.seal(conn) is not None
    # New, but dated before a sealed entry; its balance_after follows the entry before it,
    # alice's cache agrees with it and bob's cache pays for the totals: only the order of
    # alice's entries is wrong (the sealed spend no longer follows the entry before it).
    _forge_topup(clean_db, "alice", 50, _between(first, second), balance_after=150)
    _set_balance(clean_db, "alice", 150)
    _set_balance(clean_db, "bob", 70)

    code, failed, _ = _reconcile_cli(clean_db)
    assert code == 7
    assert set(failed) == {"cached_balances_match_ledger", "running_balances_consistent"}
    spend_entry = _user_entry(clean_db, second.transaction_id)
    assert failed["running_balances_consistent"] == (
        f"alice/GOLD: transaction {second.transaction_id} (entry {spend_entry}) does not "
        "continue the balance before it"
    )
    assert failed["cached_balances_match_ledger"] == (
        "alice/GOLD: cached 150, ledger 70; bob/GOLD: cached 70, ledger 100"
    )


# 3. seal seals exactly what its reconcile verified ---------------------------------------


def _seal_process(url: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "WALLETCTL_DATABASE_URL": url,
        "WALLETCTL_ACTOR": "tester",
        "WALLETCTL_CONFIG": os.devnull,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "walletctl", "seal", "--json", "--wait", "30"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_seal_never_seals_a_transaction_its_reconcile_did_not_see(
    conn: Conn, clean_db: str, ops_url: str
) -> None:
    """A broken posting, open (uncommitted) when seal starts and holding a lower id than a
    committed one: seal waits for it, and then must check it before sealing it."""
    posting.topup(conn, "alice", 100, idempotency_key="fund", **OPS)
    held = psycopg.connect(clean_db)
    try:
        held.execute("SET LOCAL session_replication_role = replica")
        broken = held.execute(
            "INSERT INTO transactions (kind, account_id, asset_id, amount, idempotency_key, "
            "actor, created_at) SELECT 'topup', id, 1, 1000, 'held', 'postgres', now() "
            "FROM accounts WHERE external_id = 'alice' RETURNING id"
        ).fetchone()
        assert broken is not None
        # The user gets 1000, the Treasury gives 1: the entries do not sum to zero.
        held.execute(
            "INSERT INTO ledger_entries (transaction_id, account_id, asset_id, amount, "
            "balance_after, created_at) SELECT %s, id, 1, 1000, 1100, now() FROM accounts "
            "WHERE external_id = 'alice' UNION ALL SELECT %s, 0, 1, -1, NULL, now()",
            (broken[0], broken[0]),
        )
        held.execute("UPDATE balances SET balance = 1100 WHERE balance = 100")
        later = posting.topup(conn, "bob", 7, idempotency_key="later", **OPS)
        assert broken[0] < later.transaction_id

        sealer = _seal_process(ops_url)
        time.sleep(1.5)
        assert sealer.poll() is None, "seal must wait for the transaction holding a lower id"
        held.commit()
        stdout, stderr = sealer.communicate(timeout=60)
    finally:
        held.close()
    assert sealer.returncode == 7, stdout + stderr
    assert f"transaction {broken[0]}" in stderr
    with psycopg.connect(clean_db) as admin:
        assert admin.execute("SELECT count(*) FROM seal_checkpoints").fetchone() == (0,)


def test_seal_in_one_snapshot_refuses_what_it_found_broken(conn: Conn, clean_db: str) -> None:
    posting.topup(conn, "alice", 100, idempotency_key="fund", **OPS)
    _set_balance(clean_db, "alice", 101)
    with pytest.raises(ReconcileFailed) as refused:
        seal.seal(conn)
    assert not refused.value.report.passed
    assert refused.value.report.failed[0].examples == (
        "alice/GOLD: cached 101, ledger 100",
        "GOLD: users hold 101 cached, 100 by the ledger",
    )


def test_a_transaction_committed_late_below_the_horizon_is_reported(
    conn: Conn, clean_db: str
) -> None:
    """A writer that draws its id before it writes anything (no walletctl function does:
    they lock the balance row first) is not waited for: its row commits below the horizon
    after the seal. The next default reconcile names it."""
    posting.topup(conn, "alice", 100, idempotency_key="fund", **OPS)
    with psycopg.connect(clean_db, autocommit=True) as late:
        drawn = late.execute(
            "SELECT nextval(pg_get_serial_sequence('transactions', 'id'))"
        ).fetchone()
    assert drawn is not None
    later = posting.topup(conn, "bob", 7, idempotency_key="later", **OPS)
    checkpoint = seal.seal(conn)
    assert checkpoint is not None and checkpoint.horizon == later.transaction_id
    assert drawn[0] < checkpoint.horizon and checkpoint.transactions == 2
    forged = _forge_topup(
        clean_db, "alice", 5, datetime.now(UTC), balance_after=105, transaction_id=drawn[0]
    )
    _set_balance(clean_db, "alice", 105)

    code, failed, stderr = _reconcile_cli(clean_db)
    assert code == 7
    assert f"transaction(s) {forged} no longer match" in failed["sealed_history_unchanged"]
    assert f"rows of sealed transaction(s) {forged} were written after checkpoint" in stderr
    # The per-asset totals see it too, without a name.
    assert (
        failed["cached_balances_match_ledger"] == "GOLD: users hold 112 cached, 107 by the ledger"
    )


# 4. Sealed rows edited, then the statistics reset ---------------------------------------


def _fresh_statistics(url: str) -> None:
    """A deployment where nothing has ever updated the ledger tables: their counters at 0."""
    with psycopg.connect(url, autocommit=True) as admin:
        for table in ("transactions", "ledger_entries"):
            admin.execute("SELECT pg_stat_reset_single_table_counters(%s::regclass)", (table,))


def _sealed_topups(conn: Conn, url: str) -> tuple[list[int], Any]:
    """Twelve top-ups over four users, sealed, in a deployment whose statistics count no
    change to the ledger tables yet (as in production: nothing ever updates them)."""
    ids = [
        posting.topup(conn, f"user-{i % 4}", 10 + i, idempotency_key=f"t{i}", **OPS).transaction_id
        for i in range(12)
    ]
    _fresh_statistics(url)
    checkpoint = seal.seal(conn)
    assert checkpoint is not None
    return ids, checkpoint


def test_editing_sealed_rows_then_resetting_the_statistics_is_still_caught(
    conn: Conn, clean_db: str
) -> None:
    ids, checkpoint = _sealed_topups(conn, clean_db)
    victim = ids[3]
    _tamper(
        clean_db,
        f"UPDATE ledger_entries SET amount = amount + 1 WHERE transaction_id = {victim} "
        "AND account_id <> 0; SELECT pg_stat_force_next_flush()",
    )
    with psycopg.connect(clean_db, autocommit=True) as admin:
        admin.execute("SELECT pg_stat_reset_single_table_counters('ledger_entries'::regclass)")
        admin.execute("SELECT pg_stat_reset()")

    code, failed, stderr = _reconcile_cli(clean_db)
    assert code == 7
    assert failed["sealed_history_unchanged"].startswith(
        f"checkpoint {checkpoint.id}: transaction(s) {victim} no longer match"
    )
    assert "statistics of this database were reset" in stderr
    assert f"rows of sealed transaction(s) {victim} were written after" in stderr
    full = _failed(reconcile(conn, full=True))
    assert full["sealed_history_unchanged"][0].startswith(
        f"checkpoint {checkpoint.id}: transaction(s) {victim} no longer match"
    )
    assert full["zero_sum_per_transaction"] == (f"transaction {victim}",)


def test_editing_sealed_rows_with_the_statistics_switched_off_is_still_caught(
    conn: Conn, clean_db: str
) -> None:
    """No reset at all: a superuser's session may simply not count (track_counts = off).
    The edited row's new version is stored after the seal's last page, by a transaction the
    seal did not see."""
    ids, _ = _sealed_topups(conn, clean_db)
    with psycopg.connect(clean_db, autocommit=True) as admin:
        admin.execute("SET track_counts = off")
        admin.execute("SET session_replication_role = replica")
        admin.execute("UPDATE transactions SET reason = 'rewritten' WHERE id = %s", (ids[5],))

    code, failed, stderr = _reconcile_cli(clean_db)
    assert code == 7
    assert f"transaction(s) {ids[5]} no longer match" in failed["sealed_history_unchanged"]
    assert f"rows of sealed transaction(s) {ids[5]} were written after" in stderr


def test_the_documented_limit_a_delete_with_statistics_off_needs_full(
    conn: Conn, clean_db: str
) -> None:
    """README, Known limits: a DELETE writes no new row, and with the statistics off it
    leaves nothing the default reconcile reads; --full re-hashes the history and names it."""
    ids, checkpoint = _sealed_topups(conn, clean_db)
    victim = ids[2]  # not the last entry of its user, so no cached balance moves
    with psycopg.connect(clean_db, autocommit=True) as admin:
        admin.execute("SET track_counts = off")
        admin.execute("SET session_replication_role = replica")
        admin.execute("DELETE FROM ledger_entries WHERE transaction_id = %s", (victim,))
        admin.execute("DELETE FROM transactions WHERE id = %s", (victim,))

    assert reconcile(conn).passed  # the limit: nothing the default reads has changed
    full = reconcile(conn, full=True)
    failed = _failed(full)
    assert "sealed_history_unchanged" in failed
    assert failed["sealed_history_unchanged"][0].startswith(
        f"checkpoint {checkpoint.id}: transaction(s) {victim} no longer match"
    )


def test_the_tripwire_stays_quiet_on_an_untouched_ledger(conn: Conn) -> None:
    for i in range(5):
        posting.topup(conn, "alice", 10, idempotency_key=f"a{i}", **OPS)
    assert seal.seal(conn) is not None
    for i in range(5):
        posting.spend(conn, "alice", 1, idempotency_key=f"s{i}", **OPS)
    report = reconcile(conn)
    assert report.passed and report.notes == ()
    assert seal.seal(conn) is not None
    posting.topup(conn, "bob", 1, idempotency_key="b", **OPS)
    report = reconcile(conn)
    assert report.passed and report.notes == ()
