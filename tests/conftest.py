"""Test harness: every test talks to a real PostgreSQL.

One fresh, uniquely named database per test session on the server named by
WALLETCTL_TEST_DATABASE_URL (or, with the variable unset, on an embedded server in a
temporary folder), built by running the alembic migrations, dropped at the end.

Tests that need an empty ledger ask for ``clean_db``: it empties the tables through a
privileged path (a superuser session with session_replication_role = replica, under which
ordinary triggers do not fire), so the append-only triggers stay as strict as in production
for everything the tests themselves do.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from walletctl import embedded, migrate
from walletctl.core import assets

from .cli_helpers import Cli

WALLETCTL_TABLES_SQL = (
    "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables "
    "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
)


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


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


def truncate_everything(url: str) -> None:
    """Empty every walletctl table, bypassing the append-only triggers (superuser only)."""
    with psycopg.connect(url, autocommit=True) as admin:
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
def conn(clean_db: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to an empty ledger with the asset GOLD."""
    with psycopg.connect(clean_db, autocommit=True) as connection:
        assets.add_asset(connection, "GOLD", "Gold Coins")
        yield connection


@pytest.fixture
def connect(clean_db: str) -> Iterator[Any]:
    """Open more connections to the same ledger (for concurrency tests); all are closed."""
    opened: list[psycopg.Connection[Any]] = []

    def open_one() -> psycopg.Connection[Any]:
        connection = psycopg.connect(clean_db, autocommit=True)
        opened.append(connection)
        return connection

    yield open_one
    for connection in opened:
        connection.close()


@pytest.fixture
def cli(clean_db: str) -> Cli:
    """walletctl in-process against an empty ledger with the asset GOLD."""
    command = Cli(clean_db)
    assert command("asset", "add", "GOLD", "Gold Coins").exit_code == 0
    return command


@pytest.fixture
def db(clean_db: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the ledger the ``cli`` fixture uses, to look at what it did."""
    with psycopg.connect(clean_db, autocommit=True) as conn:
        yield conn


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "walletctl-data"
