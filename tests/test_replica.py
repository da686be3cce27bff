"""Reports on a streaming standby, writes on the primary: with a real primary and standby
(initdb, pg_basebackup -R, pg_ctl) started by the ``replication`` fixture.

The standby's replay is paused (pg_wal_replay_pause, as its superuser) where a test needs
the two servers to differ: then what a report shows proves which server it read."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from .cli_helpers import Cli
from .conftest import Replication, truncate_everything


@pytest.fixture
def pair(replication: Replication) -> Iterator[Replication]:
    """The primary and its standby: the ledger emptied, with the asset GOLD, replayed; replay
    running again at the end whatever the test did."""
    truncate_everything(replication.primary_url("postgres"))
    with psycopg.connect(replication.primary_url(), autocommit=True) as conn:
        conn.execute("SELECT walletctl_add_asset('GOLD', 'Gold Coins')")
    replication.wait_for_replay()
    yield replication
    _resume_replay(replication)


def _cli(pair: Replication, **env: str) -> Cli:
    """walletctl with the primary as its database and the standby as its read URL."""
    return Cli(
        pair.primary_url(),
        env={"WALLETCTL_READ_URL": pair.standby_url(), **env},
    )


def _pause_replay(pair: Replication) -> None:
    with psycopg.connect(pair.standby_url("postgres"), autocommit=True) as standby:
        standby.execute("SELECT pg_wal_replay_pause()")


def _resume_replay(pair: Replication) -> None:
    with psycopg.connect(pair.standby_url("postgres"), autocommit=True) as standby:
        standby.execute("SELECT pg_wal_replay_resume()")


def _wait_until_received(pair: Replication) -> None:
    """Until the standby has received (not necessarily replayed) all the primary wrote."""
    with psycopg.connect(pair.primary_url("postgres"), autocommit=True) as primary:
        row = primary.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    with psycopg.connect(pair.standby_url("postgres"), autocommit=True) as standby:
        for _ in range(3000):
            got = standby.execute(
                "SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn", (row[0],)
            ).fetchone()
            if got and got[0]:
                return
            time.sleep(0.01)
    raise TimeoutError("the standby did not receive the primary's WAL")


def _balance(result: object) -> int:
    body = json.loads(result.stdout)
    return sum(int(row["balance"]) for row in body["balances"])


def test_a_report_reads_the_standby_and_says_it_is_caught_up(pair: Replication) -> None:
    cli = _cli(pair)
    assert cli("topup", "alice", "500").exit_code == 0
    pair.wait_for_replay()
    result = cli("balance", "alice", "--json")
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert _balance(result) == 500
    assert body["read_from"]["standby"] is True
    assert body["read_from"]["server"] == pair.standby_server
    assert body["read_from"]["lag_seconds"] == 0.0
    assert f"read from the standby {pair.standby_server}: 0.0 s behind" in result.stderr


def test_reports_read_the_standby_and_writes_go_to_the_primary(pair: Replication) -> None:
    cli = _cli(pair)
    assert cli("topup", "alice", "500", "--key", "first").exit_code == 0
    pair.wait_for_replay()
    _pause_replay(pair)
    posted = cli("topup", "alice", "70", "--key", "second", "--json")
    assert posted.exit_code == 0, posted.stderr
    second = json.loads(posted.stdout)["transaction_id"]
    assert "read from" not in posted.stderr  # a posting never touches the read server
    _wait_until_received(pair)

    # The standby has not replayed the second top-up: every report shows it without.
    assert _balance(cli("balance", "alice", "--json")) == 500
    assert _balance(cli("--primary", "balance", "alice", "--json")) == 570
    missing = cli("audit", "--txn", str(second))
    assert missing.exit_code == 4 and "read from the standby" in missing.stderr
    assert cli("--primary", "audit", "--txn", str(second)).exit_code == 0

    def document(*args: str) -> dict[str, Any]:
        """A report as one --format json document, which says where it was read."""
        result = cli(*args, "--format", "json")
        assert result.exit_code == 0, (args, result.stderr)
        assert f"read from the standby {pair.standby_server}" in result.stderr, args
        body = dict(json.loads(result.stdout))
        assert body["read_from"]["standby"] is True, args
        return body

    statement = document("audit", "alice")
    assert [entry["idempotency_key"] for entry in statement["entries"]] == ["first"]
    summary = document("audit", "--summary")
    assert summary["assets"][0]["issued_topup"] == 500
    shown = document("user", "show", "alice")
    assert shown["balances"][0]["balance"] == 500
    listed = document("user", "list")
    assert listed["users"][0]["balances"][0]["balance"] == 500
    treasury = document("balance", "--treasury")
    assert treasury["assets"][0]["outstanding"] == 500
    assert document("reconcile")["passed"] is True
    exported = cli("export", "--format", "csv")
    assert exported.exit_code == 0 and "second" not in exported.stdout
    assert "first" in exported.stdout
    assert f"read from the standby {pair.standby_server}" in exported.stderr
    # JSON lines carry the rows alone; the note on stderr says where they were read.
    lines = cli("audit", "alice", "--format", "jsonl")
    assert len(lines.stdout.splitlines()) == 1 and "read from the standby" in lines.stderr


def test_max_lag_refuses_a_standby_further_behind_and_primary_still_reads(
    pair: Replication,
) -> None:
    cli = _cli(pair)
    assert cli("topup", "alice", "500").exit_code == 0
    pair.wait_for_replay()
    _pause_replay(pair)
    time.sleep(1.5)
    assert cli("topup", "alice", "70").exit_code == 0
    _wait_until_received(pair)

    refused = cli("--max-lag", "1", "balance", "alice", "--json")
    assert refused.exit_code == 12, refused.stderr
    assert refused.stdout == ""
    assert len(refused.stderr.splitlines()) == 1
    assert "s behind its primary, more than --max-lag 1" in refused.stderr
    assert "--primary" in refused.stderr

    allowed = cli("--max-lag", "600", "balance", "alice", "--json")
    assert allowed.exit_code == 0, allowed.stderr
    lag = json.loads(allowed.stdout)["read_from"]["lag_seconds"]
    assert lag >= 1.5
    assert f"{lag:.1f} s behind its primary" in allowed.stderr

    on_primary = cli("--primary", "--max-lag", "1", "balance", "alice", "--json")
    assert on_primary.exit_code == 0 and _balance(on_primary) == 570
    assert "read_from" not in json.loads(on_primary.stdout)

    _resume_replay(pair)
    pair.wait_for_replay()
    caught_up = cli("--max-lag", "1", "balance", "alice", "--json")
    assert caught_up.exit_code == 0 and _balance(caught_up) == 570


def test_a_standby_that_receives_nothing_has_an_unknown_lag(pair: Replication) -> None:
    cli = _cli(pair)
    assert cli("topup", "alice", "500").exit_code == 0
    pair.wait_for_replay()
    with psycopg.connect(pair.standby_url("postgres"), autocommit=True) as standby:
        row = standby.execute("SELECT current_setting('primary_conninfo')").fetchone()
        assert row is not None and row[0]
        streaming_from = str(row[0])
        try:
            _set_primary_conninfo(standby, "")  # the WAL receiver stops
            assert cli("topup", "alice", "70").exit_code == 0  # which it will never receive
            refused = cli("--max-lag", "60", "balance", "alice")
            assert refused.exit_code == 12
            assert "cannot tell how far behind" in refused.stderr
            shown = cli("balance", "alice", "--json")
            assert shown.exit_code == 0 and _balance(shown) == 500
            assert json.loads(shown.stdout)["read_from"]["lag_seconds"] is None
            assert "cannot be known, it is not receiving WAL" in shown.stderr
        finally:
            _set_primary_conninfo(standby, streaming_from)
    pair.wait_for_replay()


def test_a_stalled_stream_is_not_taken_for_a_caught_up_standby(pair: Replication) -> None:
    """The primary's walsender is stopped (SIGSTOP): the standby's receiver still says
    `streaming` and it has replayed all it received, so from the standby alone it looks
    caught up while it misses a posting. --max-lag compares with the primary's WAL."""
    cli = _cli(pair)
    assert cli("topup", "alice", "500").exit_code == 0
    pair.wait_for_replay()
    with psycopg.connect(pair.primary_url("postgres"), autocommit=True) as primary:
        row = primary.execute("SELECT pid FROM pg_stat_replication").fetchone()
    assert row is not None
    walsender = int(row[0])
    os.kill(walsender, signal.SIGSTOP)
    try:
        time.sleep(1.5)
        assert cli("topup", "alice", "70").exit_code == 0
        with psycopg.connect(pair.standby_url("postgres"), autocommit=True) as standby:
            status = standby.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
        assert status == ("streaming",)
        refused = cli("--max-lag", "1", "balance", "alice", "--json")
        assert refused.exit_code == 12, refused.stdout + refused.stderr
        assert refused.stdout == "" and "more than --max-lag 1" in refused.stderr
        stale = cli("balance", "alice", "--json")  # without a limit: read, and said how far
        assert stale.exit_code == 0 and _balance(stale) == 500
    finally:
        os.kill(walsender, signal.SIGCONT)
    pair.wait_for_replay()
    caught_up = cli("--max-lag", "1", "balance", "alice", "--json")
    assert caught_up.exit_code == 0 and _balance(caught_up) == 570
    assert json.loads(caught_up.stdout)["read_from"]["lag_seconds"] == 0


def _set_primary_conninfo(standby: psycopg.Connection[tuple[object, ...]], value: str) -> None:
    from psycopg import sql

    standby.execute(sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(value)))
    standby.execute("SELECT pg_reload_conf()")
    for _ in range(1000):
        row = standby.execute("SELECT count(*) FROM pg_stat_wal_receiver").fetchone()
        if row == ((0,) if not value else (1,)):
            return
        time.sleep(0.01)
    raise TimeoutError("the WAL receiver did not follow primary_conninfo")


def test_a_posting_with_only_a_read_url_is_refused_and_nothing_is_written(
    pair: Replication, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    only_read = Cli(
        "",
        env={
            "WALLETCTL_READ_URL": pair.standby_url(),
            # Were the embedded server used, it could not start here (exit 6, not 2).
            "WALLETCTL_DATA_DIR": str(blocker / "data"),
        },
    )
    before = _snapshot(pair)
    bulk = tmp_path / "bulk.csv"
    bulk.write_text("user,amount\nalice,5\n")
    for args in (
        ["topup", "alice", "5"],
        ["spend", "alice", "5"],
        ["topup", "--file", str(bulk), "--key-prefix", "b"],
        ["seal"],
        ["--primary", "balance", "alice"],
    ):
        result = only_read(*args)
        assert result.exit_code == 2, (args, result.stderr)
        assert "a read server is configured (WALLETCTL_READ_URL) but no primary" in result.stderr
        assert len(result.stderr.splitlines()) == 1
    # A report needs no primary: it reads the standby.
    assert only_read("balance", "--treasury").exit_code == 0
    assert _snapshot(pair) == before


def test_a_standby_named_as_the_primary_refuses_every_write(
    pair: Replication, tmp_path: Path
) -> None:
    assert _cli(pair)("topup", "alice", "500").exit_code == 0
    pair.wait_for_replay()
    before = _snapshot(pair)
    wrong = Cli(pair.standby_url())
    bulk = tmp_path / "bulk.csv"
    bulk.write_text("user,amount\nalice,5\n")
    for args in (
        ["topup", "alice", "5"],
        ["spend", "alice", "5"],
        ["reverse", "1", "--reason", "x"],
        ["topup", "--file", str(bulk), "--key-prefix", "b"],
        ["seal"],
        ["asset", "add", "POINTS", "Points"],
    ):
        result = wrong(*args)
        assert result.exit_code == 6, (args, result.stderr)
        assert "read-only" in result.stderr and "Nothing was written" in result.stderr
    assert _snapshot(pair) == before


def test_libpq_multi_host_forms_pick_the_standby_for_reads_and_the_primary_for_writes(
    pair: Replication,
) -> None:
    primary, standby = pair.servers.primary.port, pair.servers.standby.port
    hosts = "host=127.0.0.1,127.0.0.1 dbname=wallet user=wl_ops"
    cli = Cli(
        f"{hosts} port={standby},{primary} target_session_attrs=read-write",
        env={
            "WALLETCTL_READ_URL": (
                f"postgresql://wl_ops@127.0.0.1:{primary},127.0.0.1:{standby}/wallet"
                "?target_session_attrs=prefer-standby"
            )
        },
    )
    posted = cli("topup", "alice", "500", "--json")
    assert posted.exit_code == 0, posted.stderr
    pair.wait_for_replay()
    read = cli("balance", "alice", "--json")
    assert read.exit_code == 0, read.stderr
    assert json.loads(read.stdout)["read_from"]["server"] == pair.standby_server
    assert _balance(read) == 500


def test_a_read_url_that_reaches_a_primary_says_so(pair: Replication) -> None:
    cli = Cli(pair.primary_url(), env={"WALLETCTL_READ_URL": pair.primary_url()})
    assert cli("topup", "alice", "5").exit_code == 0
    result = cli("--max-lag", "0", "balance", "alice", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["read_from"] == {
        "server": f"127.0.0.1:{pair.servers.primary.port}",
        "standby": False,
        "lag_seconds": 0.0,
        "receiving": True,
        "last_replayed_commit": None,
    }
    assert "which is a primary, not a standby" in result.stderr


def test_reconcile_on_a_standby_rehashes_sealed_history_and_finds_tampering(
    pair: Replication,
) -> None:
    """A standby counts no updates made on the primary, so the tripwire cannot vouch for
    sealed history there: reconcile re-hashes it, and so still finds an edited sealed row."""
    cli = _cli(pair)
    for index in range(5):
        assert cli("topup", f"user-{index}", str(100 + index)).exit_code == 0
    assert cli("seal").exit_code == 0
    pair.wait_for_replay()
    clean = cli("reconcile")
    assert clean.exit_code == 0, clean.stderr
    assert "on a standby PostgreSQL does not count" in clean.stderr

    with psycopg.connect(pair.primary_url("postgres"), autocommit=True) as admin:
        admin.execute("SET session_replication_role = replica")
        admin.execute(
            "UPDATE ledger_entries SET amount = amount + 1 WHERE transaction_id = 2 "
            "AND account_id <> 0"
        )
    pair.wait_for_replay()
    caught = cli("reconcile", "--json")
    assert caught.exit_code == 7
    checks = {check["check"]: check for check in json.loads(caught.stdout)["checks"]}
    assert "transaction(s) 2 no longer match" in checks["sealed_history_unchanged"]["examples"]


def test_db_status_names_the_primary_and_the_read_server_with_its_lag(
    pair: Replication,
) -> None:
    status = _cli(pair)("db", "status", "--json")
    assert status.exit_code == 0, status.stderr
    body = json.loads(status.stdout)
    assert body["source"] == "WALLETCTL_DATABASE_URL" and body["schema_current"] is True
    assert body["read"]["source"] == "WALLETCTL_READ_URL"
    assert body["read"]["server"] == pair.standby_server
    assert body["read"]["standby"] is True and body["read"]["lag_seconds"] == 0.0


def test_the_standby_is_reached_through_its_socket_folder(pair: Replication) -> None:
    """libpq's socket forms pass through untouched: no host, a host= parameter naming a
    folder, a key=value string naming it."""
    assert Cli(pair.primary_url())("topup", "alice", "5").exit_code == 0
    pair.wait_for_replay()
    standby = pair.servers.standby
    forms = (
        f"postgresql:///wallet?host={standby.socket_dir}&port={standby.port}&user=wl_ops",
        f"postgresql://wl_ops@/wallet?host={standby.socket_dir}&port={standby.port}",
        f"host={standby.socket_dir} port={standby.port} dbname=wallet user=wl_ops",
    )
    for form in forms:
        result = Cli(pair.primary_url(), env={"WALLETCTL_READ_URL": form})(
            "balance", "alice", "--json"
        )
        assert result.exit_code == 0, (form, result.stderr)
        where = json.loads(result.stdout)["read_from"]["server"]
        assert where == f"{standby.socket_dir} port {standby.port}"


def _snapshot(pair: Replication) -> list[tuple[object, ...]]:
    with psycopg.connect(pair.primary_url("postgres"), autocommit=True) as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM transactions), (SELECT count(*) FROM ledger_entries),"
            " (SELECT count(*) FROM seal_checkpoints), (SELECT count(*) FROM asset_types),"
            " (SELECT coalesce(sum(balance), 0) FROM balances)"
        ).fetchall()
