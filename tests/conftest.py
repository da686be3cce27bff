"""Test harness: every test talks to a real PostgreSQL.

One fresh, uniquely named database per test session on the server named by
WALLETCTL_TEST_DATABASE_URL (or, with the variable unset, on an embedded server in a
temporary folder), built by running the alembic migrations, dropped at the end.

Tests that need an empty ledger ask for ``clean_db``: it empties the tables through a
privileged path (a superuser session with session_replication_role = replica, under which
ordinary triggers do not fire), so the append-only triggers stay as strict as in production
for everything the tests themselves do.

The ledger is used as a deployment would: the ``conn``, ``connect`` and ``cli`` fixtures log
in as a login role that is a member of walletctl_operator, walletctl_batch and
walletctl_finance, never as a superuser. ``superuser_db`` is the superuser's connection,
for what only a superuser may do (and what reconcile must then catch).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from walletctl import embedded, migrate
from walletctl.core import assets

from . import servers
from .cli_helpers import Cli

ROUTES = ("direct", "pgbouncer")
through_pgbouncer_too = pytest.mark.parametrize("route", ROUTES, indirect=True)
"""Run a test twice: straight to PostgreSQL, and through PgBouncer in transaction pooling
(the ``conn``, ``connect``, ``cli`` fixtures and ``routed`` go the test's way)."""

WALLETCTL_TABLES_SQL = (
    "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables "
    "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
)


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def with_user(url: str, user: str) -> str:
    """The same server and database, logged in as ``user`` (trust auth on this machine)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def create_login_role(server_url: str, name: str, *kinds: str) -> None:
    """A login role (as people, services and cron jobs have), member of walletctl roles."""
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        admin.execute(f'CREATE ROLE "{name}" LOGIN')
        for kind in kinds:
            admin.execute(f'GRANT "walletctl_{kind}" TO "{name}"')


def drop_login_role(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP ROLE IF EXISTS "{name}"')


@contextmanager
def owned_by_a_login(server_url: str, database_url: str) -> Iterator[str]:
    """A new login (no superuser) made the owner of ``database_url``'s database, as
    createdb would leave it. Afterwards postgres owns it again, without a search_path the
    login may have set on it, and whatever the login created there is dropped."""
    name = f"walletctl_test_dbowner_{uuid.uuid4().hex[:8]}"
    database = urlsplit(database_url).path.lstrip("/")
    create_login_role(server_url, name)
    try:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" OWNER TO "{name}"')
        yield name
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" OWNER TO postgres')
            admin.execute(f'ALTER DATABASE "{database}" RESET search_path')
        with psycopg.connect(database_url, autocommit=True) as superuser:
            superuser.execute(f'DROP OWNED BY "{name}" CASCADE')
        drop_login_role(server_url, name)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL of a maintenance database on the server the tests use."""
    url = os.environ.get("WALLETCTL_TEST_DATABASE_URL")
    if url:
        yield url
        return
    data_dir = tmp_path_factory.mktemp("embedded-server")
    server = embedded.ensure_running(data_dir)
    yield server.url("postgres")
    embedded.stop(data_dir)


@pytest.fixture(scope="session")
def pgbouncer(server_url: str) -> Iterator[servers.PgBouncer]:
    """PgBouncer in transaction pooling in front of the tests' server, 8 server connections
    per database and user (so concurrent clients share them), on a free local port."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(server_url)
    if "WALLETCTL_TEST_DATABASE_URL" not in os.environ:
        pytest.skip("PgBouncer runs in front of a server named by WALLETCTL_TEST_DATABASE_URL")
    bouncer = servers.start_pgbouncer(
        str(params.get("host") or "/var/run/postgresql"), int(params.get("port") or 5432)
    )
    yield bouncer
    bouncer.stop()


@pytest.fixture
def route(request: pytest.FixtureRequest) -> str:
    """How the test reaches PostgreSQL: "direct", or "pgbouncer" (through_pgbouncer_too)."""
    return str(getattr(request, "param", "direct"))


@pytest.fixture
def routed(route: str, request: pytest.FixtureRequest) -> Callable[[str], str]:
    """The URL a client of this test uses for a database URL: itself, or through PgBouncer."""
    if route == "direct":
        return lambda url: url
    bouncer: servers.PgBouncer = request.getfixturevalue("pgbouncer")
    return bouncer.route


def library_connection(url: str, pooled: bool) -> psycopg.Connection[Any]:
    """A connection as a service using walletctl's core opens one: behind a transaction
    pooler (``pooled``), without server-side prepared statements (prepare_threshold=None)."""
    if pooled:
        return psycopg.connect(url, autocommit=True, prepare_threshold=None)
    return psycopg.connect(url, autocommit=True)


@dataclass
class Replication:
    """A primary and its streaming standby of the tests' own, with a migrated ``wallet``
    database and two login roles: ``wl_ops`` (operator, batch, finance) and ``wl_finance``."""

    servers: servers.ReplicatedServers
    database: str = "wallet"

    def primary_url(self, user: str = "wl_ops") -> str:
        return self.servers.primary.url(self.database, user)

    def standby_url(self, user: str = "wl_ops") -> str:
        return self.servers.standby.url(self.database, user)

    @property
    def standby_server(self) -> str:
        return f"127.0.0.1:{self.servers.standby.port}"

    def wait_for_replay(self) -> None:
        servers.wait_for_replay(self.primary_url("postgres"), self.standby_url("postgres"))


@pytest.fixture(scope="session")
def replication() -> Iterator[Replication]:
    """Started once, for the tests that ask; stopped at the end of the session, even after
    a failure."""
    with servers.primary_and_standby() as started:
        with psycopg.connect(started.primary.url(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE wallet")
        migrate.upgrade(started.primary.url("wallet"))
        create_login_role(started.primary.url(), "wl_ops", "operator", "batch", "finance")
        create_login_role(started.primary.url(), "wl_finance", "finance")
        replicated = Replication(started)
        replicated.wait_for_replay()
        yield replicated


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A fresh database, migrated to head by alembic, dropped after the session."""
    name = f"walletctl_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(server_url, name)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def ops_role(server_url: str, database_url: str) -> Iterator[str]:
    """A login role for everyday work: operator, batch and finance, no more."""
    name = f"walletctl_test_ops_{uuid.uuid4().hex[:8]}"
    create_login_role(server_url, name, "operator", "batch", "finance")
    yield name
    drop_login_role(server_url, name)


@pytest.fixture
def ops_url(clean_db: str, ops_role: str, routed: Callable[[str], str]) -> str:
    """The emptied session database, logged in as ``ops_role`` (through PgBouncer for a
    test marked through_pgbouncer_too)."""
    return routed(with_user(clean_db, ops_role))


def truncate_everything(url: str) -> None:
    """Empty every walletctl table, bypassing the append-only triggers (superuser only)."""
    with psycopg.connect(url, autocommit=True) as admin:
        # A transaction a failed test left open (directly or in a PgBouncer server session)
        # would make TRUNCATE wait for ever: end it, and never wait long for a lock here.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend' AND xact_start IS NOT NULL"
        )
        admin.execute("SET lock_timeout = '30s'")
        admin.execute("SET session_replication_role = replica")
        row = admin.execute(WALLETCTL_TABLES_SQL).fetchone()
        assert row is not None and row[0]
        admin.execute(f"TRUNCATE {row[0]} RESTART IDENTITY CASCADE")
        admin.execute("INSERT INTO accounts (id, external_id) VALUES (0, NULL)")


@pytest.fixture
def clean_db(database_url: str) -> str:
    """The session database, emptied: a ledger with only the Treasury in it."""
    truncate_everything(database_url)
    return database_url


@pytest.fixture
def conn(ops_url: str, route: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection, as an operator, to an empty ledger with the asset GOLD."""
    with library_connection(ops_url, route == "pgbouncer") as connection:
        assets.add_asset(connection, "GOLD", "Gold Coins")
        yield connection


@pytest.fixture
def connect(ops_url: str, route: str) -> Iterator[Any]:
    """Open more connections to the same ledger as an operator (for concurrency tests); all
    are closed."""
    opened: list[psycopg.Connection[Any]] = []

    def open_one() -> psycopg.Connection[Any]:
        connection = library_connection(ops_url, route == "pgbouncer")
        opened.append(connection)
        return connection

    yield open_one
    for connection in opened:
        connection.close()


@pytest.fixture
def cli(ops_url: str) -> Cli:
    """walletctl in-process, as an operator, against an empty ledger with the asset GOLD."""
    command = Cli(ops_url)
    assert command("asset", "add", "GOLD", "Gold Coins").exit_code == 0
    return command


@pytest.fixture
def db(clean_db: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser's connection to the ledger the ``cli`` fixture uses, to look at what it
    did."""
    with psycopg.connect(clean_db, autocommit=True) as conn:
        yield conn


@pytest.fixture
def superuser_db(db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The superuser's connection (what only a superuser may do)."""
    return db


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "walletctl-data"


# A sharded ledger (README "Beyond one machine"): a PL/Proxy proxy and four partitions,
# all databases on the test server, built once per session by `walletctl cluster create`.

CLUSTER_PARTITIONS = 4


@dataclass(frozen=True)
class ClusterUrls:
    """A superuser's URLs of the proxy and of each partition, in partition order."""

    proxy: str
    partitions: tuple[str, ...]


def create_cluster_databases(server_url: str, prefix: str, partitions: int) -> ClusterUrls:
    names = [f"{prefix}_proxy", *(f"{prefix}_p{n}" for n in range(partitions))]
    with psycopg.connect(server_url, autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    urls = [_with_database(server_url, name) for name in names]
    return ClusterUrls(urls[0], tuple(urls[1:]))


def drop_cluster_databases(server_url: str, cluster: ClusterUrls) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        for url in (cluster.proxy, *cluster.partitions):
            name = urlsplit(url).path.lstrip("/")
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def cluster(server_url: str) -> Iterator[ClusterUrls]:
    from walletctl.cluster import admin

    urls = create_cluster_databases(
        server_url, f"walletctl_test_{uuid.uuid4().hex[:8]}", CLUSTER_PARTITIONS
    )
    try:
        admin.create(urls.proxy, urls.partitions)
        yield urls
    finally:
        drop_cluster_databases(server_url, urls)


@pytest.fixture
def clean_cluster(cluster: ClusterUrls) -> ClusterUrls:
    """The session's cluster with every partition emptied (its id numbering kept)."""
    for url in cluster.partitions:
        truncate_everything(url)
    return cluster


class Ledger:
    """One ledger as the concurrency suites see it: where postings go (a database, or a
    proxy in front of partitions) and the databases that hold its rows, read as superuser."""

    def __init__(self, post_url: str, holders: tuple[str, ...], *, pooled: bool = False) -> None:
        self.post_url = post_url
        self.holders = holders
        self.proxied = len(holders) > 1
        self.pooled = pooled
        """Through PgBouncer in transaction pooling: no server-side prepared statements."""
        self._opened: list[psycopg.Connection[Any]] = []
        self.conn = self.connect()

    def connect(self) -> psycopg.Connection[Any]:
        connection = library_connection(self.post_url, self.pooled)
        self._opened.append(connection)
        return connection

    def close(self) -> None:
        for connection in self._opened:
            connection.close()

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        found: list[tuple[Any, ...]] = []
        for url in self.holders:
            with psycopg.connect(url) as conn:
                found.extend(conn.execute(sql).fetchall())
        return found

    def count(self, sql: str) -> int:
        return sum(int(row[0]) for row in self.rows(sql))

    def balance_of(self, user_id: str, asset: str = "GOLD") -> int:
        from .helpers import balance_of

        total = 0
        for url in self.holders:
            with psycopg.connect(url) as conn:
                total += balance_of(conn, user_id, asset)
        return total

    def assert_consistent(self) -> None:
        from .helpers import assert_ledger_consistent

        for url in self.holders:
            with psycopg.connect(url) as conn:
                assert_ledger_consistent(conn)

    def workers(self, direct: int) -> int:
        """Fewer connections through a proxy: each proxy backend opens its own to the
        partitions, and CI's server allows 100."""
        return direct if not self.proxied else min(direct, 16)


ledgers_and_pgbouncer = pytest.mark.parametrize(
    "ledger", ["direct", "proxy", "pgbouncer"], indirect=True
)
"""A concurrency test on every ledger, and once more straight to one database through
PgBouncer in transaction pooling."""


@pytest.fixture(params=["direct", "proxy"])
def ledger(request: pytest.FixtureRequest, ops_role: str) -> Iterator[Ledger]:
    """An empty ledger with GOLD, posted to as an operator: directly, or through a proxy
    (or, for ledgers_and_pgbouncer, through PgBouncer)."""
    if request.param == "direct":
        database = request.getfixturevalue("clean_db")
        found = Ledger(with_user(database, ops_role), (database,))
    elif request.param == "pgbouncer":
        database = request.getfixturevalue("clean_db")
        bouncer: servers.PgBouncer = request.getfixturevalue("pgbouncer")
        found = Ledger(bouncer.route(with_user(database, ops_role)), (database,), pooled=True)
    else:
        urls = request.getfixturevalue("clean_cluster")
        found = Ledger(with_user(urls.proxy, ops_role), urls.partitions)
    assets.add_asset(found.conn, "GOLD", "Gold Coins")
    yield found
    found.close()
