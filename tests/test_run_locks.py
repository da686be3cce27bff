"""Run locks (walletctl/sql/locks.sql): one seal at a time and one run per file at a time,
and no role but walletctl_batch can take either lock to keep seals or a file out.

The locks used to be advisory locks, which any role that can connect may take: a finance,
service or operator login holding the seal's key in a session of its own made every seal
exit 8, silently. Each of those roles tries again here, as a real login of its own: with the
old advisory keys (they no longer matter), and on the lock table and functions directly
(permission denied)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from walletctl.core import posting, seal
from walletctl.errors import ConcurrentRun

from .cli_helpers import Cli
from .conftest import create_login_role, drop_login_role, through_pgbouncer_too, with_user
from .helpers import ledger_snapshot

Conn = psycopg.Connection[Any]
ATTACKERS = ("finance", "service", "operator")
SEAL_REFUSAL = "another walletctl seal is running"
FILE_REFUSAL = "another walletctl is posting this file (topup) right now"
# The keys the advisory locks used to have: the seal's, and the first half of a file's.
OLD_SEAL_KEY = 0x7365616C
OLD_FILE_CLASS = 0x776C
DIRECT_ATTEMPTS = {
    "SELECT FOR UPDATE": "SELECT name FROM run_locks FOR UPDATE",
    "SELECT FOR UPDATE SKIP LOCKED": "SELECT name FROM run_locks FOR UPDATE SKIP LOCKED",
    "SELECT": "SELECT count(*) FROM run_locks",
    "INSERT": "INSERT INTO run_locks (name) VALUES ('seal')",
    "UPDATE": "UPDATE run_locks SET name = name",
    "DELETE": "DELETE FROM run_locks",
    "TRUNCATE": "TRUNCATE run_locks",
    "LOCK TABLE": "LOCK TABLE run_locks IN ACCESS EXCLUSIVE MODE",
    "EXECUTE walletctl_lock_seal": "SELECT walletctl_lock_seal()",
    "EXECUTE walletctl_lock_file": "SELECT walletctl_lock_file('topup', sha256('x'::bytea))",
    "EXECUTE walletctl_take_run_lock": "SELECT walletctl_take_run_lock('seal')",
}


@pytest.fixture(scope="module")
def attackers(server_url: str, database_url: str) -> Iterator[dict[str, str]]:
    """One login role per kind that must not be able to block a seal or a file."""
    suffix = uuid.uuid4().hex[:6]
    names = {kind: f"walletctl_test_locker_{kind}_{suffix}" for kind in ATTACKERS}
    for kind, name in names.items():
        create_login_role(server_url, name, kind)
    yield names
    for name in names.values():
        drop_login_role(server_url, name)


def _file(tmp_path: Path, rows: int = 20) -> Path:
    name = uuid.uuid4().hex[:6]  # in the rows too: every file has a digest of its own
    path = tmp_path / f"rows-{name}.csv"
    lines = "".join(f"u{name}{row % 5},{row}\n" for row in range(1, rows))
    path.write_text("user,amount\n" + lines)
    return path


def _run_file(cli: Cli, path: Path) -> Any:
    return cli("topup", "--file", str(path), "--key-prefix", path.stem, "--reason", "r", "--yes")


def _old_file_key(path: Path) -> int:
    """The second half of the advisory key a file was locked with before run_locks."""
    digest = hashlib.sha256(path.read_bytes()).digest()
    return int.from_bytes(hashlib.sha256(b"topup" + digest).digest()[:4], "big", signed=True)


@through_pgbouncer_too
@pytest.mark.parametrize("kind", ATTACKERS)
def test_advisory_locks_held_by_any_role_no_longer_block_a_seal_or_a_file(
    kind: str, attackers: dict[str, str], clean_db: str, cli: Cli, tmp_path: Path
) -> None:
    path = _file(tmp_path)
    with psycopg.connect(with_user(clean_db, attackers[kind]), autocommit=True) as attacker:
        # Session-level and transaction-level, on the keys walletctl used: held throughout.
        attacker.execute("SELECT pg_advisory_lock(%s)", (OLD_SEAL_KEY,))
        attacker.execute("SELECT pg_advisory_lock(%s, %s)", (OLD_FILE_CLASS, _old_file_key(path)))
        attacker.execute("BEGIN")
        attacker.execute("SELECT pg_advisory_xact_lock(%s)", (OLD_SEAL_KEY,))
        # Any role may also hold a weak lock on any table without a privilege on it.
        attacker.execute("SELECT pg_relation_size('run_locks')")
        posted = _run_file(cli, path)
        assert posted.exit_code == 0, posted.stderr
        sealed = cli("seal", "--wait", "20")
        assert sealed.exit_code == 0, sealed.stderr
        attacker.execute("ROLLBACK")


@pytest.mark.parametrize("kind", ATTACKERS)
def test_no_other_role_may_touch_the_lock_table_or_call_the_lock_functions(
    kind: str, attackers: dict[str, str], clean_db: str, cli: Cli, db: Conn, tmp_path: Path
) -> None:
    before = ledger_snapshot(db)
    with psycopg.connect(with_user(clean_db, attackers[kind]), autocommit=True) as attacker:
        for what, statement in DIRECT_ATTEMPTS.items():
            with pytest.raises(psycopg.errors.InsufficientPrivilege), attacker.transaction():
                attacker.execute(statement)
            assert ledger_snapshot(db) == before, (kind, what)
        # Its last attempt's transaction left open (aborted) changes nothing either.
        attacker.execute("BEGIN")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            attacker.execute(DIRECT_ATTEMPTS["SELECT FOR UPDATE"])
        assert _run_file(cli, _file(tmp_path)).exit_code == 0
        assert cli("seal", "--wait", "20").exit_code == 0
        attacker.execute("ROLLBACK")


def test_only_walletctl_batch_may_execute_the_lock_functions(db: Conn) -> None:
    granted = db.execute(
        """
        SELECT p.proname, pg_get_userbyid(acl.grantee)
        FROM pg_proc p, aclexplode(p.proacl) acl
        WHERE p.proname IN ('walletctl_lock_seal', 'walletctl_lock_file',
                            'walletctl_take_run_lock')
          AND acl.grantee <> p.proowner
        ORDER BY 1, 2
        """
    ).fetchall()
    assert granted == [
        ("walletctl_lock_file", "walletctl_batch"),
        ("walletctl_lock_seal", "walletctl_batch"),
    ]
    table = db.execute(
        "SELECT pg_get_userbyid(relowner), relacl::text FROM pg_class WHERE relname = 'run_locks'"
    ).fetchone()
    assert table == ("walletctl_owner", "{walletctl_owner=arwdDxt/walletctl_owner}")


@through_pgbouncer_too
def test_a_batch_member_holding_a_lock_keeps_seals_and_that_file_out_until_it_ends(
    ops_url: str, cli: Cli, tmp_path: Path
) -> None:
    path = _file(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).digest()
    with psycopg.connect(ops_url, autocommit=True, prepare_threshold=None) as holder:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), holder.transaction():
            holder.execute("SELECT walletctl_take_run_lock('seal')")  # internal
        holder.execute("BEGIN")
        assert holder.execute("SELECT walletctl_lock_seal()").fetchone() == (True,)
        assert holder.execute("SELECT walletctl_lock_file('topup', %s)", (digest,)).fetchone() == (
            True,
        )
        refused = cli("seal")
        assert refused.exit_code == 8 and SEAL_REFUSAL in refused.stderr
        refused = _run_file(cli, path)
        assert refused.exit_code == 8 and FILE_REFUSAL in refused.stderr
        # Another file is not this lock.
        assert _run_file(cli, _file(tmp_path)).exit_code == 0
        holder.execute("ROLLBACK")
    assert _run_file(cli, path).exit_code == 0
    assert cli("seal").exit_code == 0


def test_a_committed_lock_row_is_locked_in_place(ops_url: str, db: Conn, cli: Cli) -> None:
    """walletctl never commits its lock's transaction, but a batch member calling the
    function by hand may: the row then stays, and the lock is a row lock on it."""
    with psycopg.connect(ops_url, autocommit=True) as holder:
        assert holder.execute("SELECT walletctl_lock_seal()").fetchone() == (True,)
        assert db.execute("SELECT name FROM run_locks").fetchall() == [("seal",)]
        holder.execute("BEGIN")
        assert holder.execute("SELECT walletctl_lock_seal()").fetchone() == (True,)
        refused = cli("seal")
        assert refused.exit_code == 8 and SEAL_REFUSAL in refused.stderr
        holder.execute("ROLLBACK")
    assert cli("seal").exit_code == 0


@through_pgbouncer_too
def test_a_seal_does_not_wait_for_a_file_runs_lock_but_does_for_its_postings(
    conn: Conn, connect: Any
) -> None:
    """A run lock's transaction has a transaction id for as long as the run lasts; the seal
    waits for the transactions that have started writing the ledger's transactions (they
    may still commit a lower id), not for one that only holds a run lock (whatever it posts
    later draws a higher id)."""
    posting.topup(conn, "alice", 10, idempotency_key="first", on_behalf_of="ops", asset="GOLD")
    holder = connect()
    holder.execute("BEGIN")
    assert holder.execute(
        "SELECT walletctl_lock_file('topup', sha256('night'::bytea))"
    ).fetchone() == (True,)
    assert holder.execute("SELECT pg_current_xact_id_if_assigned() IS NOT NULL").fetchone() == (
        True,
    )
    checkpoint = seal.seal(conn, wait_seconds=5)
    assert checkpoint is not None and checkpoint.transactions == 1
    # The same transaction now posts (a member of walletctl_batch may): it holds a balance
    # lock and a lower id than a later posting, so the seal waits for it.
    holder.execute(
        "SELECT * FROM walletctl_post_batch('topup', NULL, ARRAY[1::bigint], ARRAY['bob'], "
        "ARRAY['GOLD'], ARRAY[5::bigint], ARRAY['in-lock'], ARRAY['r'])"
    )
    posting.topup(conn, "carol", 7, idempotency_key="later", on_behalf_of="ops", asset="GOLD")
    with pytest.raises(ConcurrentRun, match="still running"):
        seal.seal(conn, wait_seconds=0.3)
    holder.execute("COMMIT")
    checkpoint = seal.seal(conn, wait_seconds=5)
    assert checkpoint is not None and checkpoint.transactions == 2


@pytest.mark.parametrize("kind", [*ATTACKERS, None])
def test_a_transaction_id_held_by_any_role_does_not_keep_a_seal_waiting(
    kind: str | None,
    attackers: dict[str, str],
    server_url: str,
    clean_db: str,
    conn: Conn,
) -> None:
    """Any role, even one that is a member of nothing, may take a transaction id
    (pg_current_xact_id) and sit on it: the seal waits only for transactions writing the
    ledger, which no login role can do by itself."""
    squatter = attackers[kind] if kind else f"walletctl_test_squatter_{uuid.uuid4().hex[:6]}"
    if kind is None:
        create_login_role(server_url, squatter)
    try:
        posting.topup(conn, "alice", 10, idempotency_key="k", on_behalf_of="ops", asset="GOLD")
        with psycopg.connect(with_user(clean_db, squatter), autocommit=True) as holder:
            holder.execute("SET idle_in_transaction_session_timeout = 0")
            holder.execute("BEGIN")
            holder.execute("SELECT pg_current_xact_id()")
            checkpoint = seal.seal(conn, wait_seconds=3)
            assert checkpoint is not None and checkpoint.transactions == 1
            holder.execute("ROLLBACK")
    finally:
        if kind is None:
            drop_login_role(server_url, squatter)
