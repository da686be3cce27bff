"""The proxy's SQL, and whether a proxy runs this walletctl's.

A proxy holds no ledger and no alembic_version: its SQL is not migrated but installed
whole, idempotently, by `walletctl cluster create` (walletctl/sql/proxy/proxy.sql, every
statement CREATE OR REPLACE or IF NOT EXISTS). Its version is its text: a proxy is current
when every function of that file is in the database with the same body, which is what
every command pointed at a proxy checks (one query) before anything else.
"""

from __future__ import annotations

import re
from importlib import resources

from walletctl.core.models import Connection
from walletctl.core.sqlerrors import translated

_FUNCTION = re.compile(
    r"CREATE OR REPLACE FUNCTION (?:(\w+)\.)?(\w+)\(.*?\bAS (\$\w*\$)(.*?)\3",
    re.DOTALL | re.IGNORECASE,
)


def proxy_sql() -> str:
    return (resources.files("walletctl") / "sql" / "proxy" / "proxy.sql").read_text(
        encoding="utf-8"
    )


def expected_functions() -> dict[str, str]:
    """schema.name -> body, as pg_proc.prosrc stores it."""
    return {
        f"{match.group(1) or 'public'}.{match.group(2)}": match.group(4)
        for match in _FUNCTION.finditer(proxy_sql())
    }


def drift(conn: Connection) -> list[str]:
    """Functions of this walletctl's proxy SQL that are missing from the proxy or differ,
    and walletctl-named functions it does not define or defines twice (an overload, which a
    call could resolve to instead)."""
    expected = expected_functions()
    with translated():
        rows = conn.execute(
            "SELECT pronamespace::regnamespace::text || '.' || proname, prosrc FROM pg_proc "
            "WHERE pronamespace IN ('public'::regnamespace, "
            "                       coalesce(to_regnamespace('plproxy'), 0)) "
            "AND proname LIKE ANY (ARRAY['walletctl\\_%', 'get\\_cluster\\_%'])"
        ).fetchall()
    found: dict[str, list[str]] = {}
    for name, body in rows:
        found.setdefault(name, []).append(body)
    differing = {name for name, body in expected.items() if found.get(name) != [body]}
    differing.update(name for name in found if name not in expected)
    return sorted(differing)
