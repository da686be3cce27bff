"""The migrations and the table description (walletctl/schema.py) stay one schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from walletctl import database, migrate
from walletctl.errors import Busy, SchemaOutOfDate
from walletctl.schema import metadata

from .conftest import _with_database, create_login_role, drop_login_role, with_user


@pytest.fixture
def scratch_database(server_url: str) -> Iterator[str]:
    name = f"walletctl_scratch_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _schema_objects(url: str) -> dict[str, list[Any]]:
    with psycopg.connect(url) as conn:
        return {
            "tables": conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall(),
            "functions": conn.execute(
                "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1"
            ).fetchall(),
            "types": conn.execute(
                "SELECT typname FROM pg_type WHERE typnamespace = 'public'::regnamespace "
                "AND typtype = 'c' AND typrelid = 0 ORDER BY 1"
            ).fetchall(),
        }


def test_migrations_match_the_table_description(database_url: str) -> None:
    engine = migrate.engine(database_url)
    with engine.connect() as connection:
        differences = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_server_default": True}),
            metadata,
        )
    engine.dispose()
    assert differences == []


def test_the_schema_head_constant_is_alembics_head() -> None:
    assert migrate.head_revision() == database.SCHEMA_HEAD


def test_upgrade_from_empty_and_downgrade_back_cleanly(scratch_database: str) -> None:
    empty = _schema_objects(scratch_database)
    migrate.upgrade(scratch_database)
    upgraded = _schema_objects(scratch_database)
    assert ("ledger_entries",) in upgraded["tables"]
    assert ("walletctl_post",) in upgraded["functions"]
    migrate.downgrade(scratch_database, "base")
    after = _schema_objects(scratch_database)
    assert after["functions"] == empty["functions"]
    assert after["types"] == empty["types"]
    assert after["tables"] == [("alembic_version",)]
    migrate.upgrade(scratch_database)
    assert _schema_objects(scratch_database) == upgraded


def test_a_database_behind_head_is_reported(scratch_database: str) -> None:
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        assert not database.schema_state(conn).current
        with pytest.raises(SchemaOutOfDate, match="walletctl db upgrade"):
            database.require_current_schema(conn)
    migrate.upgrade(scratch_database)
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        database.require_current_schema(conn)


def test_check_constraints_match_the_table_description(database_url: str) -> None:
    # alembic's comparison does not look at CHECK constraints; this does.
    described = {
        f"{table.name}.{constraint.name}"
        for table in metadata.tables.values()
        for constraint in table.constraints
        if constraint.__class__.__name__ == "CheckConstraint"
    }
    with psycopg.connect(database_url) as conn:
        in_database = {
            f"{table}.{name}"
            for table, name in conn.execute(
                "SELECT conrelid::regclass::text, conname FROM pg_constraint "
                "WHERE contype = 'c' AND connamespace = 'public'::regnamespace"
            )
        }
    assert in_database == described


def test_a_session_holding_the_migration_lock_is_named_and_not_waited_for_ever(
    scratch_database: str, server_url: str
) -> None:
    """Any role that connects may take an advisory lock, the migration's included: the
    upgrade waits a bounded time, then refuses (Busy, exit 11) naming who holds it, with
    nothing changed; once it is let go the upgrade runs."""
    squatter = f"walletctl_test_squatter_{uuid.uuid4().hex[:8]}"
    create_login_role(server_url, squatter)  # a member of nothing: it may connect, no more
    try:
        with psycopg.connect(with_user(scratch_database, squatter), autocommit=True) as held:
            held.execute("SELECT pg_advisory_lock(%s)", (migrate.MIGRATION_LOCK_ID,))
            with pytest.raises(Busy, match=f"role {squatter}") as refused:
                migrate.upgrade(scratch_database, lock_wait_seconds=0.5)
            assert "pg_terminate_backend" in str(refused.value)
            assert _schema_objects(scratch_database)["tables"] == []
        migrate.upgrade(scratch_database, lock_wait_seconds=0.5)
        with psycopg.connect(scratch_database) as conn:
            database.require_current_schema(conn)
    finally:
        drop_login_role(server_url, squatter)
