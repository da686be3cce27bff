"""Names resolve to walletctl's own objects, or nothing runs.

walletctl names its tables and functions without a schema. Whoever owns the database (a
login made by createdb, a managed service's master user) may create schemas, and the
default search_path begins with "$user": a schema named after an operator's login, or a
search_path set on the database, put that owner's walletctl_post (posting 777 to an
accomplice as the operator, and printing the receipt the operator expected) in front of
walletctl's. Every connection checks its search_path first and refuses (exit 6)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from .cli_helpers import Cli
from .conftest import create_login_role, drop_login_role, owned_by_a_login, with_user
from .helpers import ledger_snapshot

Conn = psycopg.Connection[Any]

PLANTED_POST = """
CREATE FUNCTION {schema}.walletctl_post(
    p_kind text, p_user_id text, p_asset text, p_amount bigint,
    p_idempotency_key text, p_reason text, p_on_behalf_of text DEFAULT NULL
) RETURNS public.walletctl_receipt LANGUAGE sql AS $$
    SELECT public.walletctl_post(p_kind, 'mallory', p_asset, 777, p_idempotency_key,
                                 p_reason, p_on_behalf_of)
$$
"""


@pytest.fixture
def database_owner(server_url: str, clean_db: str) -> Iterator[str]:
    """A login (no superuser) that owns the ledger's database, as createdb would leave it."""
    with owned_by_a_login(server_url, clean_db) as name:
        yield name


@pytest.fixture
def unpinned(cli: Cli, server_url: str, clean_db: str) -> Iterator[str]:
    """A login made a member by plain GRANT, not by `walletctl db grant` (which pins its
    search_path): its session has the server's default, "$user", public. The ledger has
    the asset GOLD (the cli fixture)."""
    name = f"walletctl_test_unpinned_{uuid.uuid4().hex[:6]}"
    create_login_role(server_url, name, "operator", "finance")
    yield name
    drop_login_role(server_url, name)


def test_a_schema_named_after_the_login_is_refused_before_anything_runs(
    db: Conn, clean_db: str, unpinned: str, database_owner: str
) -> None:
    with psycopg.connect(with_user(clean_db, database_owner), autocommit=True) as owner:
        owner.execute(f'CREATE SCHEMA "{unpinned}"')
        owner.execute(f'GRANT USAGE ON SCHEMA "{unpinned}" TO PUBLIC')
        owner.execute(PLANTED_POST.format(schema=f'"{unpinned}"'))
        owner.execute(f'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA "{unpinned}" TO PUBLIC')
    before = ledger_snapshot(db)
    cli = Cli(with_user(clean_db, unpinned))
    for command in (("topup", "alice", "10", "--yes"), ("reconcile",), ("balance", "alice")):
        refused = cli(*command)
        assert refused.exit_code == 6, refused.output
        assert f"reaches schema(s) {unpinned}" in refused.stderr
        assert refused.stderr.count("\n") == 1
    assert ledger_snapshot(db) == before


def test_a_search_path_set_on_the_database_is_refused(
    db: Conn, clean_db: str, unpinned: str, database_owner: str
) -> None:
    with psycopg.connect(with_user(clean_db, database_owner), autocommit=True) as owner:
        owner.execute("CREATE SCHEMA planted")
        owner.execute("GRANT USAGE ON SCHEMA planted TO PUBLIC")
        owner.execute(PLANTED_POST.format(schema="planted"))
        database = conninfo_to_dict(clean_db)["dbname"]
        owner.execute(f'ALTER DATABASE "{database}" SET search_path = planted, public')
    before = ledger_snapshot(db)
    refused = Cli(with_user(clean_db, unpinned))("topup", "alice", "10", "--yes")
    assert refused.exit_code == 6 and "reaches schema(s) planted" in refused.stderr
    assert ledger_snapshot(db) == before


def test_a_login_granted_by_walletctl_is_pinned_to_public_and_keeps_working(
    db: Conn, clean_db: str, server_url: str, database_owner: str
) -> None:
    """`walletctl db grant` pins the login's search_path in this database (a role setting
    comes before the database's): a schema named after it is never reached, and its
    commands, and its own SQL, keep using walletctl's objects."""
    login = f"walletctl_test_pinned_{uuid.uuid4().hex[:6]}"
    create_login_role(server_url, login)
    try:
        assert Cli(clean_db)("db", "grant", login, "--as", "operator").exit_code == 0
        with psycopg.connect(with_user(clean_db, database_owner), autocommit=True) as owner:
            owner.execute(f'CREATE SCHEMA "{login}"')
            owner.execute(f'GRANT USAGE ON SCHEMA "{login}" TO PUBLIC')
            owner.execute(PLANTED_POST.format(schema=f'"{login}"'))
            database = conninfo_to_dict(clean_db)["dbname"]
            owner.execute(f'ALTER DATABASE "{database}" SET search_path = "$user", public')
        person = Cli(with_user(clean_db, login))
        assert person("asset", "add", "GOLD", "Gold Coins").exit_code == 0
        posted = person("topup", "alice", "10", "--yes")
        assert posted.exit_code == 0, posted.output
        with psycopg.connect(with_user(clean_db, login), autocommit=True) as raw:
            raw.execute("SELECT walletctl_post('topup', 'alice', 'GOLD', 5, 'raw', NULL, NULL)")
        rows = db.execute(
            "SELECT a.external_id, t.amount FROM transactions t JOIN accounts a"
            " ON a.id = t.account_id ORDER BY t.id"
        ).fetchall()
        assert rows == [("alice", 10), ("alice", 5)]
    finally:
        drop_login_role(server_url, login)
