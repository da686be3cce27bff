"""Roles and privileges: who may do what in a walletctl database (walletctl/sql/roles.sql
and privileges.sql), and the login roles granted each kind.

A library, like the core: it takes a connection, returns values and raises typed errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import psycopg
from psycopg import sql

from walletctl.core.sqlerrors import translated
from walletctl.errors import InvalidInput, NotFound

RoleKind = Literal["operator", "batch", "service", "finance", "approver", "admin"]
KINDS: tuple[RoleKind, ...] = ("operator", "batch", "service", "finance", "approver", "admin")
OWNER = "walletctl_owner"
GROUP_ROLES = (OWNER, *(f"walletctl_{kind}" for kind in KINDS))

SQL_FILES = ("rules", "posting", "controls", "batch", "seal", "locks", "privileges")
"""The current SQL, in the order it is applied after the tables (roles.sql comes first)."""

Connection = psycopg.Connection[Any]


def read_sql(name: str) -> str:
    """One file of the current SQL (walletctl/sql/NAME.sql)."""
    return (resources.files("walletctl") / "sql" / f"{name}.sql").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Membership:
    login_role: str
    kind: str
    can_login: bool
    superuser: bool


def ensure_roles(conn: Connection, *, privileges: bool = True) -> None:
    """Create the group roles that are missing (needs CREATEROLE or a superuser the first
    time) and apply this walletctl's ownership and privileges to the current database
    (not ``privileges``: a database with no walletctl schema, say a new server that will
    receive a partition or a restore, gets the roles only)."""
    with translated(), conn.transaction():
        conn.execute(read_sql("roles"))
        if privileges:
            conn.execute(read_sql("privileges"))


def grant(conn: Connection, login_role: str, kind: RoleKind) -> None:
    """Make ``login_role`` a member of walletctl_KIND, and pin its search_path in this
    database to public: the default begins with "$user", where whoever owns the database
    could create a schema named after the login whose walletctl_post or transactions
    table would come first (walletctl refuses such a session; a service calling the SQL
    API from its own code would not know). A setting for the role in this database comes
    before one the database's owner may set on the database."""
    _check_login_role(conn, login_role)
    with translated(), conn.transaction():  # both or neither
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(f"walletctl_{_kind(kind)}"), sql.Identifier(login_role)
            )
        )
        row = conn.execute("SELECT current_database()").fetchone()
        assert row is not None
        conn.execute(
            sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = public").format(
                sql.Identifier(login_role), sql.Identifier(str(row[0]))
            )
        )


def revoke(conn: Connection, login_role: str, kind: RoleKind) -> None:
    """Take walletctl_KIND away from ``login_role``."""
    _check_login_role(conn, login_role)
    with translated():
        conn.execute(
            sql.SQL("REVOKE {} FROM {}").format(
                sql.Identifier(f"walletctl_{_kind(kind)}"), sql.Identifier(login_role)
            )
        )


def memberships(conn: Connection) -> list[Membership]:
    """Every role that is a member of one of walletctl's group roles."""
    with translated():
        rows = conn.execute(
            """
            SELECT m.rolname, substr(g.rolname, 11), m.rolcanlogin, m.rolsuper
            FROM pg_auth_members am
            JOIN pg_roles g ON g.oid = am.roleid
            JOIN pg_roles m ON m.oid = am.member
            WHERE g.rolname = ANY(%s)
            ORDER BY 1, 2
            """,
            (list(GROUP_ROLES),),
        ).fetchall()
    return [Membership(*row) for row in rows]


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidInput(f"unknown role kind {kind!r}: use one of {', '.join(KINDS)}")
    return kind


def _check_login_role(conn: Connection, login_role: str) -> None:
    if login_role in GROUP_ROLES:
        raise InvalidInput(f"{login_role} is one of walletctl's group roles, not a login role")
    with translated():
        row = conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (login_role,))
        found = row.fetchone()
    if found is None:
        raise NotFound(
            f"role {login_role!r} does not exist; create it first (CREATE ROLE ... LOGIN)"
        )


_FUNCTION = re.compile(
    r"CREATE FUNCTION (\w+)\((.*?)\bAS (\$\w*\$)(.*?)\3", re.DOTALL | re.IGNORECASE
)
_PINNED_SEARCH_PATH = "search_path=public, pg_temp"


@dataclass(frozen=True, slots=True)
class ExpectedFunction:
    body: str
    security_definer: bool


def expected_function_definitions() -> dict[str, ExpectedFunction]:
    """Each function of the current SQL: its body as pg_proc.prosrc stores it, and whether
    it is SECURITY DEFINER (then with search_path pinned to public, pg_temp)."""
    return {
        match.group(1): ExpectedFunction(
            body=match.group(4), security_definer="SECURITY DEFINER" in match.group(2).upper()
        )
        for name in SQL_FILES
        for match in _FUNCTION.finditer(read_sql(name))
    }


def expected_functions() -> dict[str, str]:
    """Each function of the current SQL with its body, as pg_proc.prosrc stores it."""
    return {name: found.body for name, found in expected_function_definitions().items()}


def function_drift(conn: Connection) -> list[str]:
    """walletctl's functions that are not as this walletctl defines them: a body that differs
    or is missing, a function this walletctl does not define, a second function of the same
    name (an overload, which a call could resolve to instead), another owner, SECURITY
    DEFINER switched on or off, or settings other than the pinned search_path (ALTER
    FUNCTION ... SET)."""
    expected = expected_function_definitions()
    with translated():
        found = conn.execute(
            "SELECT proname::text, prosrc, prosecdef, coalesce(proconfig, '{}'), "
            "pg_get_userbyid(proowner) FROM pg_proc "
            "WHERE pronamespace = 'public'::regnamespace AND proname LIKE 'walletctl\\_%'"
        ).fetchall()
    seen: dict[str, int] = {}
    differing: set[str] = set()
    for name, body, security_definer, settings, owner in found:
        seen[name] = seen.get(name, 0) + 1
        wanted = expected.get(name)
        if (
            wanted is None
            or body != wanted.body
            or security_definer != wanted.security_definer
            or list(settings) != ([_PINNED_SEARCH_PATH] if wanted.security_definer else [])
            or owner != OWNER
        ):
            differing.add(name)
    differing.update(name for name, count in seen.items() if count > 1)
    differing.update(name for name in expected if name not in seen)
    return sorted(differing)


def deployment_risks(conn: Connection) -> list[str]:
    """What, in this database's deployment, lets someone other than a superuser get around
    the roles: a login role owning the database (on PostgreSQL 15 it may then create in
    `public` unless walletctl_owner owns that schema, and it may always drop the database),
    a role other than walletctl_owner that may create in `public`, and roles with
    CREATEROLE, which up to PostgreSQL 15 may grant themselves any walletctl role,
    walletctl_owner included. Superusers are not listed: they can do anything anyway."""
    with translated():
        rows = conn.execute(
            """
            SELECT format('%s owns this database', pg_get_userbyid(d.datdba))
            FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba
            WHERE d.datname = current_database() AND NOT r.rolsuper
              AND r.rolname <> 'walletctl_owner'
            UNION ALL
            SELECT format('%s may create objects in schema public', r.rolname)
            FROM pg_roles r
            WHERE NOT r.rolsuper AND r.rolname NOT IN ('walletctl_owner', 'pg_database_owner')
              AND has_schema_privilege(r.oid, 'public', 'CREATE')
            UNION ALL
            SELECT format('%s has CREATEROLE: it may grant itself any walletctl role, '
                          'walletctl_owner included', r.rolname)
            FROM pg_roles r
            WHERE r.rolcreaterole AND NOT r.rolsuper
              AND current_setting('server_version_num')::int < 160000
            ORDER BY 1
            """
        ).fetchall()
    return [str(row[0]) for row in rows]
