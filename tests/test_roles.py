"""Least privilege: every role a deployment grants tries to break the ledger with raw SQL,
and is refused by the database; each role's own commands work end to end through the CLI
while logged in as it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from walletctl import roles
from walletctl.core import assets, posting

from .cli_helpers import Cli
from .conftest import _with_database, create_login_role, drop_login_role, with_user
from .helpers import ledger_snapshot

Conn = psycopg.Connection[Any]
KINDS = ("operator", "batch", "service", "finance", "approver", "admin", "nobody")
TABLES = (
    "accounts",
    "asset_types",
    "balances",
    "transactions",
    "ledger_entries",
    "seal_checkpoints",
    "seal_blocks",
    "seal_asset_totals",
    "asset_policies",
    "issuance_budgets",
    "issuance_usage",
    "user_freezes",
    "credit_requests",
    "credit_request_decisions",
    "run_locks",
    "alembic_version",
)
WRITES = {
    "INSERT": "INSERT INTO {t} SELECT * FROM {t} LIMIT 1",
    "UPDATE": "UPDATE {t} SET {c} = {c}",
    "DELETE": "DELETE FROM {t}",
    "TRUNCATE": "TRUNCATE {t} CASCADE",
    "DISABLE TRIGGER": "ALTER TABLE {t} DISABLE TRIGGER ALL",
    "DROP CONSTRAINT": "ALTER TABLE {t} DROP CONSTRAINT IF EXISTS pk_{t}",
    "DROP TABLE": "DROP TABLE {t} CASCADE",
}
FIRST_COLUMN = {
    "alembic_version": "version_num",
    "balances": "balance",
    "seal_blocks": "block",
    "seal_asset_totals": "outstanding",
    "issuance_usage": "used",
    "credit_request_decisions": "request_id",
    "run_locks": "name",
}
ATTACKS = [
    ("DROP TRIGGER", "DROP TRIGGER ledger_entries_check_new ON ledger_entries"),
    (
        "CREATE OR REPLACE FUNCTION",
        "CREATE OR REPLACE FUNCTION walletctl_refuse_change() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
    ),
    ("SET session_replication_role", "SET session_replication_role = replica"),
    (
        "ALTER FUNCTION OWNER",
        "ALTER FUNCTION walletctl_posting_time(timestamptz) OWNER TO CURRENT_USER",
    ),
    ("CREATE in public", "CREATE TABLE public.walletctl_shadow (id int)"),
    ("SET ROLE owner", "SET ROLE walletctl_owner"),
    (
        "internal booking, sign flipped",
        "SELECT walletctl_post_one('spend', 'alice', 'GOLD', 5, 5, 'flip', NULL, NULL, NULL, "
        "'reversal')",
    ),
    (
        "internal book",
        "SELECT * FROM walletctl_book('topup', NULL, now(), ARRAY[1::bigint], ARRAY[1::bigint], "
        "ARRAY[1::smallint], ARRAY[5::bigint], ARRAY[5::bigint], ARRAY[105::bigint], "
        "ARRAY['raw'], ARRAY[NULL::text], ARRAY[NULL::bigint])",
    ),
    ("internal user creation", "SELECT walletctl_create_users(ARRAY['ghost'])"),
    ("internal replay receipt", "SELECT walletctl_replay_receipt(1)"),
    ("internal budget charge", "SELECT walletctl_charge_issuance('x', 'GOLD', -5, now())"),
    ("internal freeze", "SELECT walletctl_set_frozen('alice', false, 'x')"),
    ("internal policy", "SELECT walletctl_policy_refusal('alice', 'GOLD', 5, true)"),
    ("internal isolation check", "SELECT walletctl_require_read_committed()"),
    ("internal run lock", "SELECT walletctl_take_run_lock('seal')"),
]
# What each kind may call of the SQL API (README: Deploying with least privilege).
API_CALLS = {
    "post": "SELECT * FROM walletctl_post('topup', 'zed', 'GOLD', 5, %s, 'r')",
    "reverse": "SELECT * FROM walletctl_reverse(1, %s, 'why')",
    "batch": "SELECT * FROM walletctl_post_batch('topup', NULL, ARRAY[1::bigint], "
    "ARRAY['zed'], ARRAY['GOLD'], ARRAY[5::bigint], ARRAY[%s], ARRAY['r'])",
    "add_asset": "SELECT * FROM walletctl_add_asset('X' || upper(left(md5(%s), 6)), 'x')",
    "balances": "SELECT * FROM walletctl_balances('alice') WHERE %s::text IS NOT NULL",
    "read tables": "SELECT count(*) FROM ledger_entries WHERE %s::text IS NOT NULL",
    "request": "SELECT * FROM walletctl_request_credit('topup', 'zed', 'GOLD', 5, %s, 'r')",
    "approve": "SELECT * FROM walletctl_approve_request(length(%s) * 0 + 1)",
    "reject": "SELECT * FROM walletctl_reject_request(length(%s) * 0 + 1, 'no')",
    "expire": "SELECT * FROM walletctl_expire_requests() WHERE %s::text IS NOT NULL",
    "set policy": "SELECT * FROM walletctl_set_approval('GOLD', 1000 + length(%s))",
    "set budget": "SELECT * FROM walletctl_set_budget('walletctl_batch', 'GOLD', length(%s))",
    "freeze": "SELECT * FROM walletctl_freeze_user('alice', %s)",
    "unfreeze": "SELECT * FROM walletctl_unfreeze_user('alice', %s)",
    "lock seal": "SELECT walletctl_lock_seal() WHERE %s::text IS NOT NULL",
    "lock file": "SELECT walletctl_lock_file('topup', sha256(convert_to(%s, 'UTF8')))",
}
ALLOWED = {
    "operator": {"post", "reverse", "add_asset", "balances", "read tables", "request"},
    "batch": {"batch", "balances", "read tables", "lock seal", "lock file"},
    "service": {"post", "reverse", "batch", "balances", "request"},
    "finance": {"balances", "read tables"},
    "approver": {"balances", "read tables", "approve", "reject", "expire"},
    "admin": {"balances", "read tables", "set policy", "set budget", "freeze", "unfreeze"},
    "nobody": set(),
}


@pytest.fixture(scope="module")
def login_roles(server_url: str, database_url: str) -> Iterator[dict[str, str]]:
    """One login role per kind, plus one that is a member of nothing."""
    suffix = uuid.uuid4().hex[:6]
    names = {kind: f"walletctl_test_{kind}_{suffix}" for kind in KINDS}
    for kind, name in names.items():
        create_login_role(server_url, name, *(() if kind == "nobody" else (kind,)))
    yield names
    for name in names.values():
        drop_login_role(server_url, name)


@pytest.fixture
def ledger(superuser_db: Conn) -> Conn:
    """alice holds 100 GOLD after transaction 1 (posted by a superuser)."""
    assets.add_asset(superuser_db, "GOLD", "Gold Coins")
    posting.topup(superuser_db, "alice", 100, asset="GOLD", idempotency_key="t1", reason="seed")
    return superuser_db


def _as(clean_db: str, role: str) -> Conn:
    return psycopg.connect(with_user(clean_db, role), autocommit=True)


@pytest.mark.parametrize("kind", KINDS)
def test_no_role_can_write_around_the_functions(
    kind: str, ledger: Conn, clean_db: str, login_roles: dict[str, str]
) -> None:
    before = ledger_snapshot(ledger)
    with _as(clean_db, login_roles[kind]) as conn:
        for table in TABLES:
            for what, template in WRITES.items():
                statement = template.format(t=table, c=FIRST_COLUMN.get(table, "id"))
                with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                    conn.execute(statement)
                assert ledger_snapshot(ledger) == before, (kind, what, table)
        for what, statement in ATTACKS:
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(statement)
            assert ledger_snapshot(ledger) == before, (kind, what)


@pytest.mark.parametrize("kind", KINDS)
def test_each_role_may_call_exactly_its_part_of_the_sql_api(
    kind: str, ledger: Conn, clean_db: str, login_roles: dict[str, str]
) -> None:
    with _as(clean_db, login_roles[kind]) as conn:
        for call, statement in API_CALLS.items():
            key = f"{kind}-{call}"
            if call in ALLOWED[kind]:
                try:
                    conn.execute(statement, (key,)).fetchall()
                except psycopg.Error as exc:  # ran, and refused by its own rules: allowed
                    assert (exc.sqlstate or "").startswith("WL"), (kind, call, exc)
            else:
                with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                    conn.execute(statement, (key,))


def test_no_login_role_owns_or_may_write_anything(ledger: Conn) -> None:
    owners = ledger.execute(
        """
        SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class
        WHERE relnamespace = 'public'::regnamespace
        UNION
        SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace
        """
    ).fetchall()
    assert owners == [("walletctl_owner",)]
    writers = ledger.execute(
        """
        SELECT c.relname, pg_get_userbyid(acl.grantee), acl.privilege_type
        FROM pg_class c, aclexplode(c.relacl) acl
        WHERE c.relnamespace = 'public'::regnamespace
          AND acl.grantee <> c.relowner AND acl.privilege_type <> 'SELECT'
        """
    ).fetchall()
    assert writers == []
    definers = ledger.execute(
        """
        SELECT proname FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace AND prosecdef
          AND NOT coalesce('search_path=public, pg_temp' = ANY(proconfig), false)
        """
    ).fetchall()
    assert definers == [], "every SECURITY DEFINER function pins its search_path"


def test_the_actor_is_the_role_that_logged_in(
    ledger: Conn, clean_db: str, login_roles: dict[str, str]
) -> None:
    with _as(clean_db, login_roles["service"]) as conn:
        receipt = posting.topup(
            conn, "bob", 7, asset="GOLD", idempotency_key="svc", on_behalf_of="checkout"
        )
    assert (receipt.actor, receipt.on_behalf_of) == (login_roles["service"], "checkout")
    row = ledger.execute(
        "SELECT actor, on_behalf_of FROM transactions WHERE idempotency_key = 'svc'"
    )
    assert row.fetchone() == (login_roles["service"], "checkout")


def test_each_roles_commands_work_through_the_cli(
    ledger: Conn, clean_db: str, login_roles: dict[str, str], tmp_path: Any
) -> None:
    operator = Cli(with_user(clean_db, login_roles["operator"]))
    assert operator("asset", "add", "POINTS", "Points").exit_code == 0
    assert operator("topup", "carol", "20", "--key", "c1").exit_code == 0
    assert operator("reverse", "1", "--reason", "wrong user").exit_code == 0
    assert operator("balance", "carol").exit_code == 0
    assert operator("bonus", "--file", str(_file(tmp_path)), "--reason", "x").exit_code == 10

    batch = Cli(with_user(clean_db, login_roles["batch"]))
    assert batch("bonus", "--file", str(_file(tmp_path)), "--reason", "promo").exit_code == 0
    assert batch("seal").exit_code == 0
    refused = batch("topup", "carol", "5")
    assert refused.exit_code == 10, refused.output
    assert "walletctl_operator or walletctl_service" in refused.output
    assert f"logged in as {login_roles['batch']}" in refused.output

    finance = Cli(with_user(clean_db, login_roles["finance"]))
    for command in (
        ["reconcile"],
        ["audit", "carol"],
        ["audit", "--summary"],
        ["export", "--format", "csv"],
    ):
        result = finance(*command)
        assert result.exit_code == 0, (command, result.output)
    refused = finance("spend", "carol", "1")
    assert refused.exit_code == 10 and "not permitted" in refused.output


def test_db_roles_is_idempotent_and_grant_revoke_work(
    ledger: Conn, clean_db: str, server_url: str
) -> None:
    name = f"walletctl_test_new_{uuid.uuid4().hex[:6]}"
    create_login_role(server_url, name)
    try:
        admin = Cli(clean_db)
        assert admin("db", "roles").exit_code == 0
        assert admin("db", "roles").exit_code == 0
        person = Cli(with_user(clean_db, name))
        assert person("topup", "dan", "5").exit_code == 10
        assert admin("db", "grant", name, "--as", "operator").exit_code == 0
        assert person("topup", "dan", "5").exit_code == 0
        assert admin("db", "revoke", name, "--as", "operator").exit_code == 0
        assert person("topup", "dan", "5").exit_code == 10
        assert person("user", "freeze", "dan", "--reason", "x").exit_code == 10
        assert admin("db", "grant", name, "--as", "admin").exit_code == 0
        assert person("user", "freeze", "dan", "--reason", "x").exit_code == 0
        assert person("request", "expire").exit_code == 10
        assert admin("db", "grant", name, "--as", "approver").exit_code == 0
        assert person("request", "expire").exit_code == 0
        assert admin("db", "revoke", name, "--as", "approver").exit_code == 0
        assert admin("db", "revoke", name, "--as", "admin").exit_code == 0
        assert admin("db", "grant", name, "--as", "owner").exit_code == 2
        assert admin("db", "grant", "walletctl_operator", "--as", "batch").exit_code == 2
        assert admin("db", "grant", "no_such_role_x", "--as", "batch").exit_code == 4
    finally:
        drop_login_role(server_url, name)


def test_db_status_names_functions_replaced_at_the_same_revision(
    ledger: Conn, clean_db: str
) -> None:
    assert roles.function_drift(ledger) == []
    body = roles.expected_functions()["walletctl_posting_time"]
    ledger.execute(
        "CREATE OR REPLACE FUNCTION walletctl_posting_time(p_last timestamptz) "
        "RETURNS timestamptz LANGUAGE sql VOLATILE AS $$ SELECT p_last $$"
    )
    try:
        result = Cli(clean_db)("db", "status", "--json")
        assert result.exit_code == 0
        assert '"walletctl_posting_time"' in result.stdout
    finally:
        ledger.execute(
            "CREATE OR REPLACE FUNCTION walletctl_posting_time(p_last timestamptz) "
            f"RETURNS timestamptz LANGUAGE sql VOLATILE AS $${body}$$"
        )
    assert roles.function_drift(ledger) == []


def _file(tmp_path: Any) -> Any:
    path = tmp_path / "promo.csv"
    path.write_text("user,amount,asset,key\nerin,5,GOLD,p1\nfrank,6,GOLD,p2\n")
    return path


def test_a_member_of_walletctl_owner_migrates_a_database_the_owner_owns(
    server_url: str, database_url: str
) -> None:
    # `db upgrade` by a non-superuser: it migrates as walletctl_owner, so what it creates
    # belongs to the owner; a role that is not a member is told it may not.
    suffix = uuid.uuid4().hex[:6]
    migrator, stranger = f"walletctl_test_migrator_{suffix}", f"walletctl_test_stranger_{suffix}"
    name = f"walletctl_owned_{suffix}"
    create_login_role(server_url, migrator, "owner")
    create_login_role(server_url, stranger)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" OWNER walletctl_owner')
    url = _with_database(server_url, name)
    try:
        refused = Cli(with_user(url, stranger))("db", "upgrade")
        assert refused.exit_code == 10, refused.output
        assert Cli(with_user(url, migrator))("db", "upgrade").exit_code == 0
        with psycopg.connect(url) as conn:
            owners = conn.execute(
                "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class "
                "WHERE relnamespace = 'public'::regnamespace UNION "
                "SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc "
                "WHERE pronamespace = 'public'::regnamespace"
            ).fetchall()
        assert owners == [("walletctl_owner",)]
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        drop_login_role(server_url, migrator)
        drop_login_role(server_url, stranger)


def test_db_status_names_an_added_overload_and_a_changed_setting(ledger: Conn) -> None:
    # A second walletctl_charge_issuance (an overload a call could resolve to), and a
    # SECURITY DEFINER function whose search_path was changed, are drift too.
    ledger.execute(
        "CREATE FUNCTION walletctl_charge_issuance(p_role name, p_asset text, p_amount bigint, "
        "p_at timestamptz) RETURNS void LANGUAGE sql AS $$ SELECT $$"
    )
    ledger.execute("ALTER FUNCTION walletctl_balances(text) SET search_path = pg_temp, public")
    try:
        assert roles.function_drift(ledger) == ["walletctl_balances", "walletctl_charge_issuance"]
    finally:
        ledger.execute("DROP FUNCTION walletctl_charge_issuance(name, text, bigint, timestamptz)")
        ledger.execute("ALTER FUNCTION walletctl_balances(text) SET search_path = public, pg_temp")
    assert roles.function_drift(ledger) == []


def test_a_login_owning_the_database_cannot_plant_objects_the_functions_would_run(
    server_url: str,
) -> None:
    # On PostgreSQL 15 the database's owner may create in `public` (it belongs to
    # pg_database_owner): an overload of an internal function, or a table standing in for
    # the batch's temporary one, would then run as walletctl_owner. walletctl_owner owns
    # the schema instead, and `db status` names the login owning the database.
    suffix = uuid.uuid4().hex[:6]
    owner, name = f"walletctl_test_dbo_{suffix}", f"walletctl_dbo_{suffix}"
    create_login_role(server_url, owner, "operator")
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
    url = _with_database(server_url, name)
    try:
        assert Cli(url)("db", "upgrade").exit_code == 0
        with psycopg.connect(with_user(url, owner), autocommit=True) as dbo:
            for attack in (
                "CREATE FUNCTION public.walletctl_charge_issuance(p_role name, p_asset text, "
                "p_amount bigint, p_at timestamptz) RETURNS void LANGUAGE sql AS $$ SELECT $$",
                "CREATE TABLE public.walletctl_batch (line bigint)",
                "ALTER SCHEMA public OWNER TO CURRENT_USER",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    dbo.execute(attack)
        status = Cli(url)("db", "status", "--json")
        assert status.exit_code == 0, status.output
        assert f"{owner} owns this database" in status.stdout
        assert f"warning: {owner} owns this database" in status.stderr
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        drop_login_role(server_url, owner)


def test_db_roles_warns_of_a_role_with_createrole(
    server_url: str, clean_db: str, login_roles: dict[str, str]
) -> None:
    # Up to PostgreSQL 15 a CREATEROLE role may grant itself walletctl_owner (16 asks for
    # ADMIN OPTION on the role granted).
    with psycopg.connect(server_url) as admin:
        if admin.info.server_version >= 160000:
            pytest.skip("PostgreSQL 16 and later: CREATEROLE no longer grants any role")
    name = f"walletctl_test_createrole_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{name}" LOGIN CREATEROLE')
    try:
        with psycopg.connect(clean_db, autocommit=True) as conn:
            assert (
                f"{name} has CREATEROLE: it may grant itself any walletctl role, "
                "walletctl_owner included" in roles.deployment_risks(conn)
            )
    finally:
        drop_login_role(server_url, name)


def test_db_roles_and_grant_work_on_a_database_with_no_schema_yet(server_url: str) -> None:
    # A new server about to receive a partition or a restore: the group roles and the
    # memberships are the server's, so they can be set up before the schema exists.
    suffix = uuid.uuid4().hex[:6]
    name, login = f"walletctl_empty_{suffix}", f"walletctl_test_early_{suffix}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    create_login_role(server_url, login)
    url = _with_database(server_url, name)
    try:
        roles_run = Cli(url)("db", "roles")
        assert roles_run.exit_code == 0, roles_run.output
        assert "no walletctl schema yet" in roles_run.stderr
        assert Cli(url)("db", "grant", login, "--as", "operator").exit_code == 0
        assert Cli(url)("db", "upgrade").exit_code == 0
        assert Cli(with_user(url, login))("balance", "nobody").exit_code == 4  # may read
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        drop_login_role(server_url, login)
