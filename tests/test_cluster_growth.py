"""Growing a cluster: a partition moves to a second PostgreSQL server while postings go on.

The test starts its own second server (initdb and pg_ctl as the `postgres` OS user, on a
free port, stopped at the end even on failure), builds a proxy and four partitions on the
test server, and moves partition 3 there the way the README says: writes to it stopped
(read-only), pg_dump | pg_restore, `walletctl cluster move`. A writer posts through the
proxy the whole time, retrying refused postings with their key; every success it was told
of is in the ledger afterwards, and reconcile through the proxy passes before and after.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from walletctl import roles
from walletctl.cluster import admin
from walletctl.core import assets, balances, posting
from walletctl.core.models import Receipt
from walletctl.errors import DatabaseUnavailable

from .cli_helpers import Cli
from .conftest import (
    ClusterUrls,
    create_cluster_databases,
    create_login_role,
    drop_cluster_databases,
    drop_login_role,
    with_user,
)

BIN = Path("/usr/lib/postgresql/15/bin")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (BIN / "initdb").exists(),
    reason="starts a second PostgreSQL server as the postgres OS user (needs root)",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True)


@pytest.fixture
def second_server() -> Iterator[str]:
    """A second PostgreSQL cluster on a free local port; its superuser's URL."""
    folder = Path(tempfile.mkdtemp(prefix="walletctl-second-"))
    shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    port = _free_port()
    started = False
    try:
        _as_postgres(str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=40"
        _as_postgres(
            str(BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"),
            "-w", "start",
        )  # fmt: skip
        started = True
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            _as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def growing_cluster(server_url: str) -> Iterator[ClusterUrls]:
    urls = create_cluster_databases(server_url, f"walletctl_grow_{uuid.uuid4().hex[:8]}", 4)
    try:
        admin.create(urls.proxy, urls.partitions)
        yield urls
    finally:
        drop_cluster_databases(server_url, urls)


def _database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


class Writer(threading.Thread):
    """Posts top-ups and spends through the proxy until stopped; a refused posting (its
    partition read-only, or being switched) is asked again with the same key."""

    def __init__(self, proxy_url: str) -> None:
        super().__init__(daemon=True)
        self.proxy_url = proxy_url
        self.stop = threading.Event()
        self.receipts: list[Receipt] = []
        self.retries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(7)
        try:
            with psycopg.connect(self.proxy_url, autocommit=True) as conn:
                step = 0
                while not self.stop.is_set():
                    step += 1
                    user = f"user-{rng.randrange(40)}"
                    self.receipts.append(self._post(conn, user, f"w{step}", step % 3 == 0))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _post(self, conn: Any, user: str, key: str, spend: bool) -> Receipt:
        deadline = time.monotonic() + 60
        while True:
            try:
                if spend:
                    return posting.spend(conn, user, 1, asset="GOLD", idempotency_key=key)
                return posting.topup(conn, user, 3, asset="GOLD", idempotency_key=key)
            except (psycopg.Error, DatabaseUnavailable):
                if time.monotonic() > deadline:
                    raise
                self.retries += 1
                time.sleep(0.05)


def test_a_partition_moves_to_another_server_and_nothing_is_lost(
    growing_cluster: ClusterUrls, second_server: str, server_url: str, ops_role: str
) -> None:
    cluster = growing_cluster
    proxy_as_ops = with_user(cluster.proxy, ops_role)
    cli = Cli(proxy_as_ops)
    with psycopg.connect(proxy_as_ops, autocommit=True) as conn:
        assets.add_asset(conn, "GOLD", "Gold Coins")
        for n in range(40):
            posting.topup(conn, f"user-{n}", 100, asset="GOLD", idempotency_key=f"fund-{n}")
    assert cli("reconcile").exit_code == 0

    # The new server has walletctl's group roles and the same login roles.
    with psycopg.connect(second_server, autocommit=True) as conn:
        conn.execute(roles.read_sql("roles"))
    create_login_role(second_server, ops_role, "operator", "batch", "finance")

    writer = Writer(proxy_as_ops)
    writer.start()
    time.sleep(0.5)
    old = cluster.partitions[3]
    old_name = old.rsplit("/", 1)[1]
    new = _database(second_server, old_name)
    with psycopg.connect(server_url, autocommit=True) as su:
        su.execute(f'ALTER DATABASE "{old_name}" SET default_transaction_read_only = on')
        su.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (old_name,),
        )
    dump = subprocess.run(
        [str(BIN / "pg_dump"), "-Fc", "-d", old], check=True, capture_output=True
    ).stdout
    with psycopg.connect(second_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{old_name}"')
    subprocess.run(
        [str(BIN / "pg_restore"), "--exit-on-error", "-d", new], input=dump, check=True,
        capture_output=True,
    )  # fmt: skip
    moved = Cli(cluster.proxy)("cluster", "move", "3", "--to", new)
    assert moved.exit_code == 0, moved.output
    time.sleep(0.5)
    writer.stop.set()
    writer.join(timeout=90)
    assert writer.error is None, writer.error
    assert writer.retries > 0  # postings to partition 3 were refused while it moved

    status = cli("cluster", "status", "--json")
    assert status.exit_code == 0, status.output
    assert f"port={second_server.split(':')[2].split('/', maxsplit=1)[0]}" in status.stdout
    reconcile = cli("reconcile")
    assert reconcile.exit_code == 0, reconcile.output
    # Every posting the writer was told of is in the ledger, once, as reported, on the
    # partition that now holds its user (read where the proxy now points, as superuser).
    in_ledger: dict[int, tuple[Any, ...]] = {}
    with psycopg.connect(cluster.proxy) as conn:
        now = [row[0] for row in conn.execute("SELECT plproxy.get_cluster_partitions('walletctl')")]
    assert "port=" in now[3] and now[:3] == [
        admin.partition_connstr(u) for u in cluster.partitions[:3]
    ]
    for connstr in now:
        with psycopg.connect(connstr, user="postgres") as conn:
            for row in conn.execute(
                "SELECT t.id, a.external_id, t.kind, t.amount FROM transactions t "
                "JOIN accounts a ON a.id = t.account_id"
            ):
                assert row[0] not in in_ledger
                in_ledger[row[0]] = row[1:]
    for receipt in writer.receipts:
        assert in_ledger[receipt.transaction_id] == (
            receipt.user_id, receipt.kind, receipt.amount,
        )  # fmt: skip
    assert len(in_ledger) == 40 + len({r.transaction_id for r in writer.receipts})
    with psycopg.connect(proxy_as_ops, autocommit=True) as conn:
        total = sum(row.outstanding for row in balances.outstanding(conn))
    credited = 40 * 100 + sum(
        receipt.amount if receipt.kind == "topup" else -receipt.amount
        for receipt in writer.receipts
    )
    assert total == credited
    with psycopg.connect(new) as conn:
        moved_rows = conn.execute("SELECT count(*) FROM transactions").fetchone()
    assert moved_rows is not None and moved_rows[0] > 0
    drop_login_role(second_server, ops_role)

    # Each server's grants hold: a role that is an operator where the proxy is but only
    # finance on the new server posts to partitions 0-2 and not to partition 3.
    split = f"walletctl_test_split_{uuid.uuid4().hex[:8]}"
    create_login_role(server_url, split, "operator")
    create_login_role(second_server, split, "finance")
    try:
        with psycopg.connect(cluster.proxy) as conn:
            where = dict(
                conn.execute(
                    "SELECT u, walletctl_user_partition(u) FROM unnest(%s::text[]) u",
                    ([f"user-{n}" for n in range(40)],),
                ).fetchall()
            )
        as_split = Cli(with_user(cluster.proxy, split))
        local = as_split("topup", next(u for u, p in where.items() if p == 0), "1")
        assert local.exit_code == 0, local.output
        remote = as_split("topup", next(u for u, p in where.items() if p == 3), "1")
        assert remote.exit_code == 10, remote.output
    finally:
        drop_login_role(server_url, split)
        drop_login_role(second_server, split)
