"""Placement on a partition, tried as the roles that log in: a partition is an ordinary
walletctl database, so an operator may connect to one directly. Crediting there a user the
proxy routes to another partition would split that user's credits over two partitions;
the database refuses it (WL024, rules.sql) for every path that creates a user, and a
superuser who switches the rule off is still found by reconcile through the proxy."""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from walletctl import migrate
from walletctl.cluster.admin import number_partition
from walletctl.cluster.topology import Partition
from walletctl.core import posting
from walletctl.errors import WrongPartition

from .cli_helpers import Cli
from .conftest import ClusterUrls, _with_database, with_user
from .helpers import assert_ledger_consistent, ledger_snapshot

HERE, ELSEWHERE = 1, 0
"""The partition the attacker connects to, and the one its victim users live on."""


def _users_of(cluster: ClusterUrls, partition: int, count: int) -> list[str]:
    """``count`` user ids the proxy routes to ``partition``."""
    found: list[str] = []
    with psycopg.connect(cluster.proxy) as conn:
        n = 0
        while len(found) < count:
            user = f"user-{n}"
            row = conn.execute("SELECT walletctl_user_partition(%s)", (user,)).fetchone()
            assert row is not None
            if row[0] == partition:
                found.append(user)
            n += 1
    return found


def _snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return ledger_snapshot(conn)


def _accounts(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT external_id FROM accounts WHERE external_id IS NOT NULL ORDER BY 1"
            )
        ]


@pytest.fixture
def gold(clean_cluster: ClusterUrls, ops_role: str) -> ClusterUrls:
    """The emptied cluster with the asset GOLD on every partition (added through the proxy)."""
    added = Cli(with_user(clean_cluster.proxy, ops_role))("asset", "add", "GOLD", "Gold Coins")
    assert added.exit_code == 0, added.output
    return clean_cluster


@pytest.fixture
def direct(gold: ClusterUrls, ops_role: str) -> str:
    """Partition HERE, logged in directly as the operator (no proxy in between)."""
    return with_user(gold.partitions[HERE], ops_role)


def test_an_operator_on_a_partition_cannot_credit_a_user_of_another(
    gold: ClusterUrls, direct: str, ops_role: str
) -> None:
    victim = _users_of(gold, ELSEWHERE, 1)[0]
    before = _snapshot(gold.partitions[HERE])
    with psycopg.connect(direct, autocommit=True) as conn:
        for sql in (
            "SELECT walletctl_post('topup', %s, 'GOLD', 100, 'k-raw', NULL)",
            "SELECT walletctl_post('bonus', %s, 'GOLD', 100, 'k-raw', 'promo')",
        ):
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(sql, (victim,))
            assert refused.value.sqlstate == "WL024"
            message = refused.value.diag.message_primary or ""
            assert victim in message
            assert f"partition {ELSEWHERE} of 4" in message
            assert f"(partition {HERE})" in message
            assert refused.value.diag.message_detail == str(ELSEWHERE)
        # Through walletctl's Python core: a typed error naming the user's partition.
        with pytest.raises(WrongPartition) as typed:
            posting.topup(conn, victim, 100, asset="GOLD", idempotency_key="k-core")
        assert typed.value.partition == ELSEWHERE
        assert victim in str(typed.value)
    # Through the CLI: one line on stderr, exit 2.
    result = Cli(direct)("topup", victim, "100", "--key", "k-cli")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1
    assert f"belongs to partition {ELSEWHERE} of 4" in result.stderr
    assert _snapshot(gold.partitions[HERE]) == before  # nothing written

    # The same user through the proxy lands on its partition and posts.
    proxied = Cli(with_user(gold.proxy, ops_role))("topup", victim, "100", "--json")
    assert proxied.exit_code == 0, proxied.output
    assert json.loads(proxied.stdout)["transaction_id"] % 4 == ELSEWHERE
    assert victim in _accounts(gold.partitions[ELSEWHERE])
    assert victim not in _accounts(gold.partitions[HERE])


def test_a_user_of_the_partition_posts_there_directly(gold: ClusterUrls, direct: str) -> None:
    resident = _users_of(gold, HERE, 1)[0]
    with psycopg.connect(direct, autocommit=True) as conn:
        receipt = posting.topup(conn, resident, 100, asset="GOLD", idempotency_key="k1")
        assert receipt.transaction_id % 4 == HERE
        again = posting.topup(conn, resident, 100, asset="GOLD", idempotency_key="k1")
        assert again.replayed
        posting.spend(conn, resident, 30, asset="GOLD", idempotency_key="k2")
    with psycopg.connect(gold.partitions[HERE], autocommit=True) as su:
        # Creating an existing user again (ON CONFLICT DO NOTHING fires the trigger) passes.
        su.execute("SELECT walletctl_create_users(ARRAY[%s])", (resident,))
        assert_ledger_consistent(su)
    assert _accounts(gold.partitions[HERE]) == [resident]


def test_a_batch_refuses_the_rows_of_other_partitions_alone(
    gold: ClusterUrls, direct: str, tmp_path: Path
) -> None:
    residents = _users_of(gold, HERE, 2)
    victim = _users_of(gold, ELSEWHERE, 1)[0]
    users = [residents[0], victim, residents[1]]
    batch_sql = (
        "SELECT * FROM walletctl_post_batch('topup', NULL, %s, %s, %s, %s, %s, %s, %s) "
        "ORDER BY line"
    )

    def arrays(prefix: str) -> tuple[Any, ...]:
        return (
            [1, 2, 3],
            users,
            ["GOLD"] * 3,
            [10, 20, 30],
            [f"{prefix}-{n}" for n in range(3)],
            [None] * 3,
        )

    before = _snapshot(gold.partitions[HERE])
    with psycopg.connect(direct, autocommit=True) as conn:
        # Atomic: the whole batch is refused with the row's SQLSTATE, nothing written.
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(batch_sql, (*arrays("atomic"), True))
        assert refused.value.sqlstate == "WL024"
        assert "line 2" in str(refused.value) and victim in str(refused.value)
        assert _snapshot(gold.partitions[HERE]) == before
        # Not atomic: that row alone is refused (invalid, the detail says why), as a
        # frozen user's row is; the others post.
        rows = conn.execute(batch_sql, (*arrays("mixed"), False)).fetchall()
    outcomes = [(line, outcome) for line, outcome, *_rest in rows]
    assert outcomes == [(1, "posted"), (2, "invalid"), (3, "posted")]
    assert rows[1][2] is None  # no transaction
    assert f"belongs to partition {ELSEWHERE} of 4" in rows[1][4]
    assert _accounts(gold.partitions[HERE]) == sorted(residents)
    with psycopg.connect(gold.partitions[HERE]) as su:
        assert_ledger_consistent(su)

    # The CLI's bulk files, directly on the partition: atomic refused whole (exit 2);
    # otherwise the row is reported and the others post (exit 9).
    path = tmp_path / "mix.csv"
    path.write_text("user,amount\n" + "".join(f"{user},5\n" for user in users))
    cli = Cli(direct)
    atomic = cli("topup", "--file", str(path), "--key-prefix", "f-at", "--atomic")
    assert atomic.exit_code == 2, atomic.output
    assert f"belongs to partition {ELSEWHERE}" in atomic.stderr
    partial = cli("topup", "--file", str(path), "--key-prefix", "f-mix")
    assert partial.exit_code == 9, partial.output
    assert victim not in _accounts(gold.partitions[HERE])


def test_a_request_for_a_user_of_another_partition_is_refused_when_filed(
    gold: ClusterUrls, direct: str
) -> None:
    victim = _users_of(gold, ELSEWHERE, 1)[0]
    with psycopg.connect(gold.partitions[HERE], autocommit=True) as su:
        su.execute("SELECT walletctl_set_approval('GOLD', 50, 24)")
    before = _snapshot(gold.partitions[HERE])
    with psycopg.connect(direct, autocommit=True) as conn, pytest.raises(psycopg.Error) as refused:
        conn.execute(
            "SELECT * FROM walletctl_request_credit('topup', %s, 'GOLD', 500, 'rq-1', 'vip')",
            (victim,),
        )
    assert refused.value.sqlstate == "WL024"
    assert _snapshot(gold.partitions[HERE]) == before
    result = Cli(direct)("topup", victim, "500", "--key", "rq-2", "--reason", "vip")
    assert result.exit_code == 2, result.output
    assert f"belongs to partition {ELSEWHERE}" in result.stderr
    assert _snapshot(gold.partitions[HERE]) == before


def test_a_superuser_is_refused_too_and_switching_the_rule_off_is_found_by_reconcile(
    gold: ClusterUrls, ops_role: str
) -> None:
    victim = _users_of(gold, ELSEWHERE, 1)[0]
    proxy = Cli(with_user(gold.proxy, ops_role))
    assert proxy("topup", victim, "100").exit_code == 0  # on its own partition
    with psycopg.connect(gold.partitions[HERE], autocommit=True) as su:
        with pytest.raises(psycopg.Error) as refused:
            su.execute("INSERT INTO accounts (external_id) VALUES (%s)", (victim,))
        assert refused.value.sqlstate == "WL024"
        su.execute("SET session_replication_role = replica")  # triggers off
        su.execute("SELECT walletctl_post('topup', %s, 'GOLD', 7, 'k-bypass', NULL)", (victim,))
    assert proxy("balance", victim, "--json").exit_code == 0
    result = proxy("reconcile", "--json")
    assert result.exit_code == 7, result.output
    checks = {check["check"]: check for check in json.loads(result.stdout)["checks"]}
    placement = checks["partition_placement"]
    assert placement["status"] == "FAIL"
    assert placement["failures"] == 1
    assert f"partition {HERE} (" in placement["examples"]


def _migration_0008() -> Any:
    path = migrate.migrations_dir() / "versions"
    spec = importlib.util.spec_from_file_location("m0008", path / "0008_partition_placement.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_upgrade_keeps_users_already_misplaced_and_refuses_new_ones(server_url: str) -> None:
    """A partition at revision 0007 that already holds a user of another partition (what
    a direct credit could do then) upgrades: the user stays and is reported, new ones are
    refused; the downgrade takes the rule away again."""
    name = f"walletctl_place_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as su:
        su.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(server_url, name)
    try:
        migrate.upgrade(url, "0007")
        with psycopg.connect(url, autocommit=True) as conn:
            number_partition(conn, Partition(HERE, f"dbname={name}"), 2)
            foreign = [
                row[0]
                for row in conn.execute(
                    "SELECT 'u' || g FROM generate_series(1, 20) g "
                    "WHERE hashtext('u' || g) & 1 <> %s ORDER BY g",
                    (HERE,),
                )
            ]
            conn.execute("SELECT walletctl_add_asset('GOLD', 'Gold Coins')")
            conn.execute(
                "SELECT walletctl_post('topup', %s, 'GOLD', 5, 'old', NULL)", (foreign[0],)
            )
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            # The upgrade's warning (a server WARNING: psql and the server log show it).
            notices: list[str] = []
            conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
            conn.execute(_migration_0008().WARN_MISPLACED_SQL)
            assert notices == [
                "walletctl: 1 user(s) on this partition belong to other partitions; they "
                "stay (reconcile through the proxy names them: partition_placement), new "
                "ones are refused (WL024)"
            ]
            # The user already here stays and still posts; a new one is refused.
            conn.execute(
                "SELECT walletctl_post('topup', %s, 'GOLD', 5, 'again', NULL)", (foreign[0],)
            )
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(
                    "SELECT walletctl_post('topup', %s, 'GOLD', 5, 'new', NULL)", (foreign[1],)
                )
            assert refused.value.sqlstate == "WL024"
        migrate.downgrade(url, "0007")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "SELECT walletctl_post('topup', %s, 'GOLD', 5, 'new', NULL)", (foreign[1],)
            )
        migrate.upgrade(url)
    finally:
        with psycopg.connect(server_url, autocommit=True) as su:
            su.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
