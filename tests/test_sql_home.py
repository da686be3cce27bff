"""One current home for the SQL: a database built from walletctl/sql/ (and the tables of
walletctl/schema.py) and one built by the migrations have the same catalog: tables,
columns, constraints, indexes, function bodies and settings, triggers, grants, owners."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from walletctl import migrate
from walletctl.build import build_current

from .conftest import _with_database

CATALOG = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity
        FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), condeferrable,
               condeferred
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' ORDER BY 1, 2""",
    "functions": """
        SELECT p.oid::regprocedure::text, p.prosrc, p.prosecdef, p.proconfig, p.provolatile,
               pg_get_userbyid(p.proowner), p.proacl::text
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid), tgenabled
        FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2""",
    "relations": """
        SELECT relname, relkind, pg_get_userbyid(relowner), relacl::text FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'S', 'v', 'm')
        ORDER BY 1""",
    "types": """
        SELECT typname, pg_get_userbyid(typowner) FROM pg_type
        WHERE typnamespace = 'public'::regnamespace AND typtype = 'c'
          AND typrelid IN (SELECT oid FROM pg_class WHERE relkind = 'c') ORDER BY 1""",
}


def _catalog(url: str) -> dict[str, list[Any]]:
    with psycopg.connect(url) as conn:
        return {name: conn.execute(query).fetchall() for name, query in CATALOG.items()}


@pytest.fixture
def two_databases(server_url: str) -> Iterator[tuple[str, str]]:
    names = [f"walletctl_home_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    with psycopg.connect(server_url, autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(server_url, names[0]), _with_database(server_url, names[1])
    with psycopg.connect(server_url, autocommit=True) as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_current_sql_and_the_migrations_build_the_same_database(
    two_databases: tuple[str, str],
) -> None:
    migrated, current = two_databases
    migrate.upgrade(migrated)
    build_current(current)
    by_migrations, by_current_sql = _catalog(migrated), _catalog(current)
    for part in CATALOG:
        assert by_current_sql[part] == by_migrations[part], part
