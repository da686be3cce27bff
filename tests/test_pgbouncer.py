"""walletctl through a real PgBouncer in transaction pooling (the ``pgbouncer`` fixture: 8
server connections per database and user, shared by every client).

The racing-spends, racing-keys, bulk-crash and seal tests also run through it (marked
through_pgbouncer_too in their modules); these are the ones about the pooler itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier
from typing import Any

import psycopg
import pytest

from walletctl import database
from walletctl.core import posting, seal
from walletctl.errors import ConcurrentRun

from .cli_helpers import Cli, run_process
from .conftest import with_user
from .servers import PgBouncer

OPS = {"on_behalf_of": "ops", "asset": "GOLD"}


@pytest.fixture
def pooled(clean_db: str, ops_role: str, pgbouncer: PgBouncer) -> Iterator[str]:
    """The emptied ledger with GOLD, as the operator role, through PgBouncer."""
    url = pgbouncer.route(with_user(clean_db, ops_role))
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("SELECT walletctl_add_asset('GOLD', 'Gold Coins')")
    yield url


def test_a_pooler_is_detected_and_server_side_prepared_statements_are_turned_off(
    pooled: str, clean_db: str, ops_role: str
) -> None:
    with database.open_connection(pooled) as through:
        assert database.behind_pooler(through) and through.prepare_threshold is None
    with database.open_connection(with_user(clean_db, ops_role)) as direct:
        assert not database.behind_pooler(direct) and direct.prepare_threshold == 5
    forced = database.open_connection(pooled, prepared_statements="on")
    assert forced.prepare_threshold == 5
    forced.close()
    with database.open_connection(
        with_user(clean_db, ops_role), prepared_statements="off"
    ) as direct_off:
        assert direct_off.prepare_threshold is None


def _post_from_many_clients(url: str, prepared: str, clients: int = 24) -> list[str]:
    """``clients`` connections posting 3 top-ups each at once; what each call ended with."""
    connections = [
        database.open_connection(url, prepared_statements=prepared)  # type: ignore[arg-type]
        for _ in range(clients)
    ]
    barrier = Barrier(clients)

    def work(index: int) -> list[str]:
        barrier.wait()
        outcomes = []
        for step in range(3):
            try:
                key = f"{prepared}{index}.{step}"
                posting.topup(connections[index], f"u{index}", 5, idempotency_key=key, **OPS)
                outcomes.append("posted")
            except psycopg.Error as exc:
                outcomes.append(type(exc).__name__)
        return outcomes

    try:
        with ThreadPoolExecutor(clients) as pool:
            return [outcome for outcomes in pool.map(work, range(clients)) for outcome in outcomes]
    finally:
        for connection in connections:
            connection.close()


def test_prepared_statements_break_under_transaction_pooling_and_auto_avoids_them(
    pooled: str,
) -> None:
    """What the issue saw (95 of 96 top-ups failed): a statement prepared in one server
    session is missing, or another one's, in the next. walletctl's default does not
    prepare through a pooler."""
    forced = _post_from_many_clients(pooled, "on")
    assert set(forced) - {"posted"}, "prepared statements must fail through PgBouncer here"
    assert _post_from_many_clients(pooled, "auto") == ["posted"] * 72


def test_a_session_level_lock_outlives_its_client_through_pgbouncer(
    pooled: str, clean_db: str
) -> None:
    """Why walletctl holds no session-level lock: under transaction pooling it stays with
    the server session after the client is gone, held for whoever gets that session."""
    key = uuid.uuid4().int % 2**31
    with psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as client:
        assert client.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone() == (True,)
    with psycopg.connect(clean_db, autocommit=True) as look:
        held = look.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (key,),
        ).fetchone()
        assert held == (1,), "the client left; its lock did not"
        look.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND objid = %s",
            (key,),
        )


def test_the_cli_works_through_pgbouncer_without_any_setting(pooled: str, tmp_path: Any) -> None:
    cli = Cli(pooled)
    for step in range(3):
        posted = cli("topup", "alice", "100", "--key", f"k{step}")
        assert posted.exit_code == 0, posted.stderr
    assert cli("spend", "alice", "50").exit_code == 0
    bulk = tmp_path / "bulk.csv"
    bulk.write_text("user,amount\n" + "".join(f"u{row % 7},{row}\n" for row in range(1, 40)))
    filed = cli("bonus", "-f", str(bulk), "--key-prefix", "p", "--reason", "r", "--batch-size=5")
    assert filed.exit_code == 0, filed.stderr
    assert cli("seal").exit_code == 0
    assert cli("reconcile").exit_code == 0
    status = json.loads(cli("db", "status", "--json").stdout)
    assert status["through_pooler"] is True and status["schema_current"] is True


def _hold_a_posting_in_flight(url: str) -> psycopg.Connection[Any]:
    """A posting whose transaction stays open: a seal waits for it (it holds a lower id)."""
    slow = psycopg.connect(url, autocommit=True, prepare_threshold=None)
    slow.execute("BEGIN")
    slow.execute("SELECT walletctl_post('topup', 'bob', 'GOLD', 5, 'slow', NULL, 'x')")
    return slow


def _seal_lock_holders(clean_db: str) -> int:
    """How many sessions hold the seal's run lock, read without competing for it (a poll
    that took it could make the sealer under test give up): a session whose open
    transaction called walletctl_lock_seal and holds the row it inserted into run_locks, or
    locked there (RowExclusiveLock or RowShareLock on the table, in pg_locks; a run that
    was refused ends its transaction at once). The inserted row itself cannot be seen: it
    is not committed."""
    with psycopg.connect(clean_db, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(DISTINCT a.pid) FROM pg_stat_activity a"
            " JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'relation' AND l.granted"
            " AND l.relation = 'run_locks'::regclass"
            " AND l.mode IN ('RowExclusiveLock', 'RowShareLock')"
            " WHERE a.datname = current_database() AND a.state = 'idle in transaction'"
            " AND a.query LIKE '%walletctl_lock_seal%'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_one_seal_at_a_time_and_a_killed_sealer_leaves_no_lock_behind(
    pooled: str, clean_db: str
) -> None:
    with database.open_connection(pooled) as conn:
        posting.topup(conn, "alice", 100, idempotency_key="fund", **OPS)
        slow = _hold_a_posting_in_flight(pooled)
        try:
            posting.topup(conn, "carol", 7, idempotency_key="later", **OPS)
            env = {"WALLETCTL_DATABASE_URL": pooled, "WALLETCTL_CONFIG": os.devnull}
            sealer = subprocess.Popen(
                [sys.executable, "-m", "walletctl", "seal", "--wait", "60"],
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 30
                while _seal_lock_holders(clean_db) == 0:  # until the sealer holds the lock
                    assert sealer.poll() is None, f"the sealer ended: exit {sealer.returncode}"
                    assert time.monotonic() < deadline, "the sealer never took its lock"
                    time.sleep(0.05)
                again = run_process("seal", env=env)
                assert again.exit_code == 8 and "another walletctl seal is running" in again.stderr
                with pytest.raises(ConcurrentRun, match="another walletctl seal is running"):
                    seal.seal(conn, wait_seconds=0)
                sealer.send_signal(signal.SIGKILL)
                sealer.wait(timeout=30)
            finally:
                if sealer.poll() is None:
                    sealer.kill()
                    sealer.wait(timeout=30)
            slow.execute("COMMIT")
        finally:
            slow.close()
        # The killed sealer's transaction was rolled back, and its lock with it.
        checkpoint = seal.seal(conn, wait_seconds=20)
        assert checkpoint is not None and checkpoint.transactions == 3
