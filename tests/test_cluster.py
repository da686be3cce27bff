"""A ledger sharded by user over PL/Proxy: a proxy and four partitions on the test server
(the ``cluster`` fixture, built by `walletctl cluster create`). Every command through the
proxy, as an operator; the partitions read as superuser to see where rows went."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from walletctl.cluster import admin
from walletctl.database import SCHEMA_HEAD

from .cli_helpers import Cli
from .conftest import CLUSTER_PARTITIONS, ClusterUrls, create_login_role, drop_login_role, with_user
from .helpers import assert_ledger_consistent, ledger_snapshot


@pytest.fixture
def proxy_cli(clean_cluster: ClusterUrls, ops_role: str) -> Cli:
    command = Cli(with_user(clean_cluster.proxy, ops_role))
    result = command("asset", "add", "GOLD", "Gold Coins")
    assert result.exit_code == 0, result.output
    return command


def _partition_rows(cluster: ClusterUrls, sql: str, *params: Any) -> list[list[tuple[Any, ...]]]:
    found = []
    for url in cluster.partitions:
        with psycopg.connect(url) as conn:
            found.append(conn.execute(sql, params).fetchall())
    return found


def _hash_partition(cluster: ClusterUrls, user: str) -> int:
    with psycopg.connect(cluster.proxy) as conn:
        row = conn.execute("SELECT walletctl_user_partition(%s)", (user,)).fetchone()
    assert row is not None
    return int(row[0])


def _receipt(result: Any) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_create_is_idempotent_and_the_proxy_stores_no_user(
    clean_cluster: ClusterUrls, ops_role: str
) -> None:
    version_sql = "SELECT version FROM plproxy.walletctl_config_version"
    with psycopg.connect(clean_cluster.proxy) as conn:
        before = conn.execute(version_sql).fetchone()
    topology = admin.create(clean_cluster.proxy, clean_cluster.partitions)  # again
    assert topology.count == CLUSTER_PARTITIONS
    with psycopg.connect(clean_cluster.proxy) as conn:
        stored = [
            row[0] for row in conn.execute("SELECT plproxy.get_cluster_partitions('walletctl')")
        ]
        version = conn.execute("SELECT version FROM plproxy.walletctl_config_version").fetchone()
    assert len(stored) == CLUSTER_PARTITIONS
    assert all("user=" not in text and "password" not in text for text in stored)
    assert version == before  # nothing changed, so PL/Proxy's cached configuration stays
    status = Cli(with_user(clean_cluster.proxy, ops_role))("cluster", "status", "--json")
    assert status.exit_code == 0, status.output
    partitions = json.loads(status.stdout)["partitions"]
    assert [p["reachable"] for p in partitions] == [True] * CLUSTER_PARTITIONS
    assert {p["schema_revision"] for p in partitions} == {SCHEMA_HEAD}


def test_create_refuses_a_count_that_is_not_a_power_of_two(clean_cluster: ClusterUrls) -> None:
    result = Cli(clean_cluster.proxy)(
        "cluster", "create", "--proxy", clean_cluster.proxy,
        "--partitions", ",".join(clean_cluster.partitions[:3]),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "power of two" in result.stderr


def test_every_user_lives_on_one_partition_and_ids_name_it(
    proxy_cli: Cli, clean_cluster: ClusterUrls, ops_role: str
) -> None:
    users = [f"user-{n}" for n in range(24)]
    receipts = {}
    for user in users:
        receipts[user] = _receipt(proxy_cli("topup", user, "100", "--key", f"k-{user}", "--json"))
    per_partition = _partition_rows(
        clean_cluster,
        "SELECT a.external_id, t.id, t.actor FROM transactions t "
        "JOIN accounts a ON a.id = t.account_id",
    )
    seen: dict[str, int] = {}
    for number, rows in enumerate(per_partition):
        for user, transaction_id, actor in rows:
            assert user not in seen, f"{user} on partitions {seen[user]} and {number}"
            seen[user] = number
            assert transaction_id % CLUSTER_PARTITIONS == number  # the id names its partition
            assert actor == ops_role  # who logged in to the proxy, not a proxy's own role
            assert _hash_partition(clean_cluster, user) == number
    assert sorted(seen) == sorted(users)
    assert all(per_partition)  # every partition holds some
    ids = [receipt["transaction_id"] for receipt in receipts.values()]
    assert len(set(ids)) == len(ids)  # unique across the cluster


def test_reversal_and_audit_find_the_partition_from_the_id(
    proxy_cli: Cli, clean_cluster: ClusterUrls
) -> None:
    credited = {
        user: _receipt(proxy_cli("topup", user, "50", "--json"))
        for user in ("alice", "bob", "carol", "dave", "erin")
    }
    for user, receipt in credited.items():
        shown = proxy_cli("audit", "--txn", str(receipt["transaction_id"]), "--json")
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout)["user"] == user
        reversal = _receipt(
            proxy_cli("reverse", str(receipt["transaction_id"]), "--reason", "wrong", "--json")
        )
        assert reversal["reverses"] == receipt["transaction_id"]
        assert reversal["balance_after"] == 0
        again = proxy_cli("reverse", str(receipt["transaction_id"]), "--reason", "again")
        assert again.exit_code == 5  # already reversed, on its partition
    missing = proxy_cli("audit", "--txn", "999999")
    assert missing.exit_code == 4
    assert "not found" in missing.stderr
    statement = proxy_cli("audit", "alice", "--json")
    assert statement.exit_code == 0, statement.output
    assert [json.loads(line)["kind"] for line in statement.stdout.splitlines()] == [
        "topup",
        "reversal",
    ]


def test_errors_from_a_partition_read_as_on_one_database(proxy_cli: Cli) -> None:
    proxy_cli("topup", "alice", "10", "--key", "a1")
    short = proxy_cli("spend", "alice", "11")
    assert short.exit_code == 3
    assert short.stderr.strip() == (
        "walletctl: error: insufficient funds: alice holds 10 GOLD, 11 needed"
    )
    unknown = proxy_cli("spend", "nobody", "1")
    assert unknown.exit_code == 4
    conflict = proxy_cli("topup", "alice", "99", "--key", "a1")
    assert conflict.exit_code == 5
    assert "REMOTE" not in conflict.stderr and "a1" in conflict.stderr


def test_idempotency_keys_are_scoped_to_the_user(
    proxy_cli: Cli, clean_cluster: ClusterUrls
) -> None:
    """The guarantee through a proxy: a key replays or conflicts for its user exactly as on
    one database. Reused for a user on another partition, it posts there too (not detected
    when posting), and `audit --key` reports the conflict, naming both."""
    users = [f"user-{n}" for n in range(40)]
    first = next(u for u in users if _hash_partition(clean_cluster, u) == 0)
    elsewhere = next(u for u in users if _hash_partition(clean_cluster, u) == 1)
    neighbour = next(u for u in users if u != first and _hash_partition(clean_cluster, u) == 0)
    posted = _receipt(proxy_cli("topup", first, "10", "--key", "shared", "--json"))
    replay = _receipt(proxy_cli("topup", first, "10", "--key", "shared", "--json"))
    assert replay["replayed"] and replay["transaction_id"] == posted["transaction_id"]
    assert proxy_cli("topup", first, "11", "--key", "shared").exit_code == 5
    assert proxy_cli("topup", neighbour, "10", "--key", "shared").exit_code == 5  # same partition
    other = _receipt(proxy_cli("topup", elsewhere, "10", "--key", "shared", "--json"))
    assert not other["replayed"] and other["transaction_id"] != posted["transaction_id"]
    audit = proxy_cli("audit", "--key", "shared")
    assert audit.exit_code == 5
    assert first in audit.stderr and elsewhere in audit.stderr
    assert "partition 0" in audit.stderr and "partition 1" in audit.stderr


def test_global_reads_add_up_the_partitions(proxy_cli: Cli, clean_cluster: ClusterUrls) -> None:
    for n in range(12):
        proxy_cli("topup", f"u{n}", str(100 + n), "--reason", "order")
        proxy_cli("spend", f"u{n}", "10")
    proxy_cli("bonus", "u0", "5", "--reason", "promo")
    treasury = json.loads(proxy_cli("balance", "--treasury", "--json").stdout)["assets"]
    outstanding = sum(100 + n - 10 for n in range(12)) + 5
    gold = next(row for row in treasury if row["asset"] == "GOLD")
    assert gold["outstanding"] == outstanding
    assert gold["treasury_balance"] == -outstanding
    assert gold["holders"] == 12
    per_partition = _partition_rows(
        clean_cluster, "SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE account_id = 0"
    )
    assert sum(rows[0][0] for rows in per_partition) == -outstanding
    summary = proxy_cli("audit", "--summary", "--json")
    assert summary.exit_code == 0, summary.output
    totals = json.loads(summary.stdout)["assets"][0]
    assert totals["issued_topup"] == sum(100 + n for n in range(12))
    assert totals["issued_bonus"] == 5
    assert totals["spent"] == 120
    assert totals["outstanding_end"] == outstanding
    assert totals["transactions"] == 25
    reconcile = proxy_cli("reconcile", "--json")
    assert reconcile.exit_code == 0, reconcile.output
    checks = {check["check"]: check for check in json.loads(reconcile.stdout)["checks"]}
    assert checks["partition_placement"]["status"] == "PASS"
    assert checks["partition_placement"]["checked"] == 12 + 25


def test_bulk_files_split_by_user(
    proxy_cli: Cli, clean_cluster: ClusterUrls, tmp_path: Any
) -> None:
    rows = "".join(f"user-{n},{n + 1}\n" for n in range(30))
    path = tmp_path / "promo.csv"
    path.write_text("user,amount\n" + rows)
    result = proxy_cli("bonus", "--file", str(path), "--key-prefix", "promo", "--reason", "p")
    assert result.exit_code == 0, result.output
    again = proxy_cli("bonus", "--file", str(path), "--key-prefix", "promo", "--reason", "p")
    assert again.exit_code == 0, again.output
    counts = [
        rows[0][0] for rows in _partition_rows(clean_cluster, "SELECT count(*) FROM transactions")
    ]
    assert sum(counts) == 30 and all(counts)  # once, on every partition
    spends = tmp_path / "spends.csv"
    spends.write_text("user,amount\nuser-1,1\nghost,1\n")
    partial = proxy_cli("spend", "--file", str(spends), "--key-prefix", "s", "--skip-invalid")
    assert partial.exit_code in (0, 9), partial.output
    assert "ghost" in partial.output


def test_a_file_through_the_proxy_holds_its_run_lock_on_the_proxy(
    proxy_cli: Cli, clean_cluster: ClusterUrls, ops_role: str, tmp_path: Any
) -> None:
    path = tmp_path / "locked.csv"
    path.write_text("user,amount\n" + "".join(f"user-{n},1\n" for n in range(10)))
    digest = hashlib.sha256(path.read_bytes()).digest()
    command = ("topup", "--file", str(path), "--key-prefix", "locked")
    with psycopg.connect(with_user(clean_cluster.proxy, ops_role), autocommit=True) as holder:
        holder.execute("BEGIN")
        held = holder.execute("SELECT walletctl_lock_file('topup', %s)", (digest,)).fetchone()
        assert held == (True,)
        refused = proxy_cli(*command)
        assert refused.exit_code == 8, refused.output
        assert "another walletctl is posting this file" in refused.stderr
        holder.execute("ROLLBACK")
    assert proxy_cli(*command).exit_code == 0


def test_what_a_proxy_cannot_do_is_refused_and_writes_nothing(
    proxy_cli: Cli, clean_cluster: ClusterUrls, tmp_path: Any
) -> None:
    proxy_cli("topup", "alice", "10")
    before = [_snapshot(url) for url in clean_cluster.partitions]
    dry = proxy_cli("spend", "alice", "1", "--dry-run")
    assert dry.exit_code == 2
    assert "--dry-run" in dry.stderr
    path = tmp_path / "atomic.csv"
    path.write_text("user,amount\n" + "".join(f"user-{n},1\n" for n in range(20)))
    atomic = proxy_cli("topup", "--file", str(path), "--key-prefix", "at", "--atomic")
    assert atomic.exit_code == 2
    assert "one partition" in atomic.stderr
    for command in (
        ("policy", "show"),
        ("request", "list"),
        ("user", "freeze", "alice", "--reason", "r"),
        ("user", "list"),
    ):
        refused = proxy_cli(*command)
        assert refused.exit_code == 2, (command, refused.output)
        assert "proxy" in refused.stderr
    assert [_snapshot(url) for url in clean_cluster.partitions] == before


def test_a_user_frozen_on_its_partition_is_refused_through_the_proxy(
    proxy_cli: Cli, clean_cluster: ClusterUrls
) -> None:
    proxy_cli("topup", "alice", "10")
    home = clean_cluster.partitions[_hash_partition(clean_cluster, "alice")]
    with psycopg.connect(home, autocommit=True) as su:
        su.execute("SELECT walletctl_freeze_user('alice', 'chargeback')")
    refused = proxy_cli("spend", "alice", "1")
    assert refused.exit_code == 8
    assert "frozen" in refused.stderr
    shown = proxy_cli("balance", "alice")
    assert shown.exit_code == 0 and "frozen" in shown.stderr


def _snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return ledger_snapshot(conn)


def test_reconcile_through_the_proxy_names_the_tampered_partition(
    proxy_cli: Cli, clean_cluster: ClusterUrls
) -> None:
    for n in range(12):
        proxy_cli("topup", f"u{n}", "100")
    assert proxy_cli("reconcile").exit_code == 0
    victim = 2
    with psycopg.connect(clean_cluster.partitions[victim], autocommit=True) as su:
        su.execute("SET session_replication_role = replica")  # triggers off
        su.execute(
            "UPDATE ledger_entries SET amount = amount + 1 "
            "WHERE id = (SELECT min(id) FROM ledger_entries WHERE account_id <> 0)"
        )
    result = proxy_cli("reconcile")
    assert result.exit_code == 7
    assert f"partition {victim} (" in result.stdout
    assert not any(f"partition {n} (" in result.stdout for n in range(4) if n != victim)


def test_a_partition_in_the_wrong_place_is_refused(
    clean_cluster: ClusterUrls, proxy_cli: Cli
) -> None:
    """A configuration that names partition 1's database as partition 0 would put users
    where no one finds them: every read through the proxy refuses it, naming it."""
    with psycopg.connect(clean_cluster.proxy, autocommit=True) as su:
        original = su.execute(
            "SELECT partition, connstr FROM plproxy.walletctl_partitions"
        ).fetchall()
        su.execute(
            "UPDATE plproxy.walletctl_partitions SET connstr = "
            "(SELECT connstr FROM plproxy.walletctl_partitions WHERE partition = 1) "
            "WHERE partition = 0"
        )
        try:
            result = proxy_cli("reconcile")
            assert result.exit_code == 6
            assert "is not partition 0 of 4" in result.stderr
        finally:
            for number, connstr in original:
                su.execute(
                    "UPDATE plproxy.walletctl_partitions SET connstr = %s WHERE partition = %s",
                    (connstr, number),
                )


def test_a_proxy_with_other_functions_is_refused_until_create_runs_again(
    clean_cluster: ClusterUrls, proxy_cli: Cli
) -> None:
    with psycopg.connect(clean_cluster.proxy, autocommit=True) as su:
        su.execute(
            "CREATE OR REPLACE FUNCTION walletctl_transaction_hash(p_transaction_id bigint) "
            "RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 0 $$"
        )
    result = proxy_cli("balance", "--treasury")
    assert result.exit_code == 6
    assert "walletctl cluster create" in result.stderr
    admin.create(clean_cluster.proxy, clean_cluster.partitions)
    assert proxy_cli("balance", "--treasury").exit_code == 0


def test_the_proxy_gives_a_role_nothing_its_partitions_do_not(
    clean_cluster: ClusterUrls, server_url: str, proxy_cli: Cli
) -> None:
    """Each role acts on the partitions as itself: finance cannot post through the proxy,
    a role that is nothing cannot read, and no role but a superuser can change where the
    proxy sends calls or write a PL/Proxy function of its own."""
    proxy_cli("topup", "alice", "10")
    finance = "walletctl_test_cluster_finance"
    nobody = "walletctl_test_cluster_nobody"
    create_login_role(server_url, finance, "finance")
    create_login_role(server_url, nobody)
    try:
        as_finance = Cli(with_user(clean_cluster.proxy, finance))
        assert as_finance("topup", "alice", "5").exit_code == 10
        assert as_finance("balance", "alice").exit_code == 0
        assert Cli(with_user(clean_cluster.proxy, nobody))("balance", "alice").exit_code == 10
        with psycopg.connect(
            with_user(clean_cluster.proxy, "walletctl_test_cluster_finance")
        ) as conn:
            for attack in (
                "UPDATE plproxy.walletctl_partitions SET connstr = 'dbname=postgres'",
                "CREATE FUNCTION walletctl_mine() RETURNS int LANGUAGE plproxy AS "
                "$$ CLUSTER 'walletctl'; RUN ON 0; SELECT 1; $$",
                "CREATE SERVER mine FOREIGN DATA WRAPPER plproxy",
                "SELECT * FROM walletctl_post('topup', 'alice', 'GOLD', 1, 'x', NULL)",
                # A file's run lock: walletctl_batch's alone.
                "SELECT walletctl_lock_file('topup', sha256('x'::bytea))",
                "SELECT walletctl_take_run_lock('file:topup:x')",
                "SELECT * FROM plproxy.walletctl_run_locks FOR UPDATE",
                "INSERT INTO plproxy.walletctl_run_locks VALUES ('x')",
                "TRUNCATE plproxy.walletctl_run_locks",
            ):
                with pytest.raises(psycopg.Error):
                    conn.execute(attack)
                conn.rollback()
    finally:
        drop_login_role(server_url, finance)
        drop_login_role(server_url, nobody)
    for url in clean_cluster.partitions:
        with psycopg.connect(url) as conn:
            assert_ledger_consistent(conn)


@pytest.mark.skipif(shutil.which("hledger") is None, reason="hledger is not installed")
def test_export_through_the_proxy_streams_each_partition_as_one_file(
    proxy_cli: Cli, clean_cluster: ClusterUrls, tmp_path: Path
) -> None:
    from walletctl.core.export import COUNTER_ACCOUNTS, account_name

    from .test_finance import _beancount_balances, _hledger_balances

    held = {f"u{n}": 100 + n for n in range(12)}
    for user, amount in held.items():
        proxy_cli("topup", user, str(amount + 5), "--reason", "order")
        proxy_cli("spend", user, "5")
    as_csv = proxy_cli("export", "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    lines = as_csv.stdout.splitlines()
    assert lines[0].startswith("entry_id") or "transaction_id" in lines[0]
    assert sum(line == lines[0] for line in lines) == 1  # one header
    assert len(lines) - 1 == 2 * 24  # every entry of every partition
    as_jsonl = proxy_cli("export", "--format", "jsonl")
    assert len(as_jsonl.stdout.splitlines()) == 2 * 24
    # The chart of accounts (README "Exports"): users' accounts are liabilities.
    expected = {(account_name(user), "GOLD"): -amount for user, amount in held.items()}
    expected[(COUNTER_ACCOUNTS["topup"], "GOLD")] = sum(held.values()) + 5 * len(held)
    expected[(COUNTER_ACCOUNTS["spend"], "GOLD")] = -5 * len(held)
    for fmt, reader in (("ledger", _hledger_balances), ("beancount", _beancount_balances)):
        path = tmp_path / f"cluster.{fmt}"
        result = proxy_cli("export", "--format", fmt, "--output", str(path))
        assert result.exit_code == 0, result.output
        assert reader(path) == expected, fmt


def test_seal_through_the_proxy_seals_every_partition(
    proxy_cli: Cli, clean_cluster: ClusterUrls
) -> None:
    for n in range(12):
        proxy_cli("topup", f"u{n}", "100")
    sealed = proxy_cli("seal", "--json")
    assert sealed.exit_code == 0, sealed.output
    partitions = json.loads(sealed.stdout)["partitions"]
    assert [row["checkpoint"] for row in partitions] == [1] * CLUSTER_PARTITIONS
    counts = _partition_rows(clean_cluster, "SELECT count(*) FROM seal_checkpoints")
    assert [rows[0][0] for rows in counts] == [1] * CLUSTER_PARTITIONS
    proxy_cli("topup", "u0", "1")
    reconcile = proxy_cli("reconcile", "--json")
    assert reconcile.exit_code == 0, reconcile.output
    assert json.loads(reconcile.stdout)["mode"] == "incremental"


def test_the_proxy_has_the_sql_apis_signatures(clean_cluster: ClusterUrls) -> None:
    """proxy.sql repeats the SQL API's signatures and its receipt type (PL/Proxy calls the
    partition's function of the same name and reads its columns by name): a change to the
    API that the proxy does not follow fails here."""
    functions = """
        SELECT p.proname::text, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid)
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
          AND p.proname IN ('walletctl_post', 'walletctl_reverse', 'walletctl_post_batch',
                            'walletctl_balances', 'walletctl_add_asset')
        ORDER BY 1"""
    receipt = """
        SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
        WHERE attrelid = 'walletctl_receipt'::regtype::text::regclass AND attnum > 0
        ORDER BY attnum"""
    with (
        psycopg.connect(clean_cluster.proxy) as proxy,
        psycopg.connect(clean_cluster.partitions[0]) as partition,
    ):
        found = proxy.execute(functions).fetchall()
        assert len(found) == 5
        assert found == partition.execute(functions).fetchall()
        assert proxy.execute(receipt).fetchall() == partition.execute(receipt).fetchall()


def test_a_partition_that_is_down_stops_only_its_users(
    proxy_cli: Cli, clean_cluster: ClusterUrls
) -> None:
    users = [f"user-{n}" for n in range(20)]
    down = next(u for u in users if _hash_partition(clean_cluster, u) == 1)
    up = next(u for u in users if _hash_partition(clean_cluster, u) == 0)
    with psycopg.connect(clean_cluster.proxy, autocommit=True) as su:
        (original,) = su.execute(
            "SELECT connstr FROM plproxy.walletctl_partitions WHERE partition = 1"
        ).fetchone() or ("",)
        su.execute(
            "UPDATE plproxy.walletctl_partitions SET connstr = connstr || ' port=1' "
            "WHERE partition = 1"
        )
        su.execute("UPDATE plproxy.walletctl_config_version SET version = version + 1")
        try:
            assert proxy_cli("topup", up, "5").exit_code == 0
            refused = proxy_cli("topup", down, "5")
            assert refused.exit_code == 6
            assert len(refused.stderr.strip().splitlines()) == 1
            assert "cannot reach partition database" in refused.stderr
            treasury = proxy_cli("balance", "--treasury")
            assert treasury.exit_code == 6
            status = proxy_cli("cluster", "status", "--json")
            assert status.exit_code == 6
            reachable = [p["reachable"] for p in json.loads(status.stdout)["partitions"]]
            assert reachable == [True, False, True, True]
        finally:
            su.execute(
                "UPDATE plproxy.walletctl_partitions SET connstr = %s WHERE partition = 1",
                (original,),
            )
            su.execute("UPDATE plproxy.walletctl_config_version SET version = version + 1")


def test_the_cluster_commands_in_every_format(clean_cluster: ClusterUrls, ops_role: str) -> None:
    """The output contract (tests/test_output_contract.py) for the cluster group, which
    needs a cluster: create again (idempotent) and status, in every format."""
    from walletctl.cli.output import FORMAT_NAMES

    from .test_output_contract import _check

    superuser = Cli(clean_cluster.proxy)
    ops = Cli(with_user(clean_cluster.proxy, ops_role))
    partitions = ",".join(clean_cluster.partitions)
    for fmt in FORMAT_NAMES:
        created = superuser(
            "cluster", "create", "--proxy", clean_cluster.proxy, "--partitions", partitions,
            "--format", fmt,
        )  # fmt: skip
        assert created.exit_code == 0, created.output
        _check(fmt, created.stdout)
        status = ops("cluster", "status", "--format", fmt)
        assert status.exit_code == 0, status.output
        _check(fmt, status.stdout)
