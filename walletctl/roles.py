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

SQL_FILES = ("rules", "posting", "controls", "batch", "seal", "privileges")
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


def ensure_roles(conn: Connection) -> None:
    """Create the group roles that are missing (needs CREATEROLE or a superuser the first
    time) and apply this walletctl's ownership and privileges to the current database."""
    with translated(), conn.transaction():
        conn.execute(read_sql("roles"))
        conn.execute(read_sql("privileges"))


def grant(conn: Connection, login_role: str, kind: RoleKind) -> None:
    """Make ``login_role`` a member of walletctl_KIND."""
    _check_login_role(conn, login_role)
    with translated():
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(f"walletctl_{_kind(kind)}"), sql.Identifier(login_role)
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
    r"CREATE FUNCTION (\w+)\(.*?\bAS (\$\w*\$)(.*?)\2", re.DOTALL | re.IGNORECASE
)


def expected_functions() -> dict[str, str]:
    """Each function of the current SQL with its body, as pg_proc.prosrc stores it."""
    return {
        match.group(1): match.group(3)
        for name in SQL_FILES
        for match in _FUNCTION.finditer(read_sql(name))
    }


def function_drift(conn: Connection) -> list[str]:
    """Functions of this walletctl whose body in the database differs (or is missing), and
    walletctl functions in the database that this walletctl does not define."""
    expected = expected_functions()
    with translated():
        found = dict(
            conn.execute(
                "SELECT proname::text, prosrc FROM pg_proc "
                "WHERE pronamespace = 'public'::regnamespace AND proname LIKE 'walletctl\\_%'"
            ).fetchall()
        )
    differing = [name for name, body in expected.items() if found.get(name) != body]
    unknown = [name for name in found if name not in expected]
    return sorted(differing + unknown)
