"""Connections: reach the database the configuration names, and check its schema.

Every command goes through :func:`connect`, so "database unreachable" and "schema behind"
are decided in one place.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from walletctl import conninfo, embedded
from walletctl.config import DatabaseTarget, PreparedStatements
from walletctl.errors import (
    DatabaseUnavailable,
    InvalidInput,
    NotPermitted,
    SchemaOutOfDate,
    UnsafeSearchPath,
)

if TYPE_CHECKING:
    import psycopg

SCHEMA_HEAD = "0010"
"""The newest migration this walletctl knows; a test checks it equals alembic's head.

Kept as a constant so that a command does not import alembic (about half a second) just to
learn whether the schema is current."""

CONNECT_TIMEOUT_SECONDS = 5


@dataclass(frozen=True, slots=True)
class SchemaState:
    revision: str | None

    @property
    def current(self) -> bool:
        return self.revision == SCHEMA_HEAD


def target_url(target: DatabaseTarget, notify: embedded.Notify | None = None) -> str:
    """The URL to connect to. For the embedded target: start the server (first time:
    initialise it) and create walletctl's database in it; ``notify`` hears about a server
    this call created or started."""
    if target.url is not None:
        return target.url
    url, conn = _embedded(target, notify)
    conn.close()
    return url


def _embedded(
    target: DatabaseTarget,
    notify: embedded.Notify | None,
    database: str = embedded.EMBEDDED_DATABASE,
) -> tuple[str, psycopg.Connection[tuple[object, ...]]]:
    assert target.data_dir is not None
    server = embedded.ensure_running(target.data_dir, notify)
    return server.url(database), _open_embedded(server, database)


def open_connection(
    url: str, *, prepared_statements: PreparedStatements = "auto"
) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit psycopg connection to ``url`` (any libpq form, as written), with
    connection failures turned into DatabaseUnavailable.

    What the connection string (or the PG* environment) says wins: walletctl adds only a
    fallback application name, and a connect timeout when none is given. Server-side
    prepared statements are turned off (``prepare_threshold = None``, which the core
    honours) when ``prepared_statements`` is "off", or "auto" and a pooler sits in between
    (see ``behind_pooler``)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    extra: dict[str, Any] = {"fallback_application_name": "walletctl"}
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:  # libpq could not parse it
        raise InvalidInput(
            f"malformed database URL {conninfo.masked(url)!r}: {conninfo.scrubbed_error(exc, url)}"
        ) from None
    if "connect_timeout" not in given and not os.environ.get("PGCONNECT_TIMEOUT"):
        extra["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    try:
        conn = psycopg.connect(url, autocommit=True, **extra)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {conninfo.masked(url) or 'the server the PG* variables name'}: "
            f"{conninfo.scrubbed_error(exc, url)}"
        ) from None
    if prepared_statements == "off" or (prepared_statements == "auto" and behind_pooler(conn)):
        conn.prepare_threshold = None
    return conn


def behind_pooler(conn: psycopg.Connection[Any]) -> bool:
    """Whether something sits between this connection and PostgreSQL (PgBouncer, say).

    A pooler hands the client a cancel key of its own, so the process id the connection was
    given at start-up is not the process id of the server session answering it. PgBouncer
    in transaction pooling may run each transaction in another server session, where a
    statement prepared in an earlier one does not exist, or is another statement of the
    same name."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return row is None or int(row[0]) != conn.info.backend_pid


def schema_state(conn: psycopg.Connection[tuple[object, ...]]) -> SchemaState:
    from walletctl.core.sqlerrors import translated

    # A role that is a member of no walletctl role may not even read the revision: that is
    # NotPermitted (exit 10), said before anything else.
    with translated():
        row = conn.execute(
            "SELECT to_regclass('public.alembic_version') IS NOT NULL, current_schemas(true)"
        ).fetchone()
        assert row is not None and isinstance(row[1], list)
        _require_safe_search_path(conn, [str(name) for name in row[1]])
        if not row[0]:
            return SchemaState(None)
        version = conn.execute("SELECT version_num FROM public.alembic_version").fetchone()
    return SchemaState(str(version[0]) if version else None)


def _require_safe_search_path(
    conn: psycopg.Connection[tuple[object, ...]], schemas: list[str]
) -> None:
    """walletctl names its tables and functions without a schema: the session must find
    them in public, behind nothing but pg_catalog. Whoever owns the database may create
    schemas, and the default search_path begins with "$user": a schema named after a login
    role (or a search_path set on the database) would put its own walletctl_post, or its
    own transactions table, in front of walletctl's for that login. Checked at every
    connection, before any other query of walletctl's."""
    others = [
        name
        for name in schemas
        if name not in ("pg_catalog", "public") and not name.startswith("pg_temp")
    ]
    if others or "public" not in schemas:
        raise UnsafeSearchPath(
            f"the session's search_path reaches schema(s) {', '.join(others) or '(no public)'} "
            f"besides pg_catalog and public ({', '.join(schemas)}): a table or function "
            "there named like walletctl's would be used instead of walletctl's. Drop the "
            f"schema, or pin the login's search_path (ALTER ROLE {conn.info.user} IN DATABASE "
            f"{conn.info.dbname} SET search_path = public); nothing was done"
        )


def require_current_schema(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    state = schema_state(conn)
    if state.current:
        return
    if state.revision is None:
        from walletctl.cluster.topology import topology

        if topology(conn) is not None:  # a PL/Proxy proxy: no ledger of its own
            _require_current_proxy(conn)
            return
        raise SchemaOutOfDate(
            "the database has no walletctl schema; run `walletctl db upgrade` first"
        )
    raise SchemaOutOfDate(
        f"the database schema is at revision {state.revision}, this walletctl needs "
        f"{SCHEMA_HEAD}; run `walletctl db upgrade`"
    )


def _require_current_proxy(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    from walletctl.cluster.proxy_sql import drift

    differing = drift(conn)
    if differing:
        raise SchemaOutOfDate(
            f"the proxy's functions are not this walletctl's ({', '.join(differing[:3])}"
            f"{', ...' if len(differing) > 3 else ''}); run `walletctl cluster create`"
        )


EMBEDDED_LOGIN_ROLE = "walletctl_local"
"""The embedded server's everyday login: its owner's commands run with least privilege
(operator, batch, finance, and admin to set its own policies: one person has no second
pair of eyes to be an approver), as on a shared server; only the db commands that change the
schema or the roles log in as the server's superuser."""

_EMBEDDED_LOGIN_SQL = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'walletctl_local') THEN
        CREATE ROLE walletctl_local LOGIN;
    END IF;
END
$$;
GRANT walletctl_operator, walletctl_batch, walletctl_finance, walletctl_admin
    TO walletctl_local;
"""


@contextmanager
def connect(
    target: DatabaseTarget,
    notify: embedded.Notify | None = None,
    *,
    embedded_database: str = embedded.EMBEDDED_DATABASE,
    admin: bool = False,
    prepared_statements: PreparedStatements = "auto",
    require_schema: bool = True,
) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to a database whose schema is current (any schema, or
    none, without ``require_schema``: the db commands that manage roles, which are the
    server's, not the database's).

    The embedded server's databases belong to walletctl, so they are created and migrated
    on the spot (``embedded_database`` names which one: the demo keeps its own), and its
    owner works as ``walletctl_local`` unless ``admin`` (schema and role changes); a server
    named by URL is never changed without `walletctl db upgrade`.
    """
    if target.url is None:
        conn = _embedded_connection(target, notify, embedded_database, admin=admin)
    else:
        conn = open_connection(target.url, prepared_statements=prepared_statements)
    try:
        if require_schema:
            require_current_schema(conn)
        yield conn
    except NotPermitted as refused:
        if refused.login is not None:
            raise
        raise refused.for_login(conn.info.user) from None
    finally:
        conn.close()


def _embedded_connection(
    target: DatabaseTarget, notify: embedded.Notify | None, database: str, *, admin: bool
) -> psycopg.Connection[tuple[object, ...]]:
    """The embedded database, migrated, as its superuser (``admin``) or walletctl_local.

    A warm command logs in once, as walletctl_local; the first command (no database, no
    role yet) and the first after an upgrade of walletctl set things up as the superuser."""
    assert target.data_dir is not None
    server = embedded.ensure_running(target.data_dir, notify)
    if not admin:
        try:
            conn = open_connection(
                server.url(database, user=EMBEDDED_LOGIN_ROLE), prepared_statements="on"
            )
        except DatabaseUnavailable:
            conn = None  # no database or no role yet: set them up below
        if conn is not None:
            if schema_state(conn).current:
                return conn
            conn.close()
    superuser = _open_embedded(server, database)
    try:
        if not schema_state(superuser).current:
            from walletctl import migrate

            migrate.upgrade(server.url(database))
        superuser.execute(_EMBEDDED_LOGIN_SQL)
    except BaseException:
        superuser.close()
        raise
    if admin:
        return superuser
    superuser.close()
    return open_connection(server.url(database, user=EMBEDDED_LOGIN_ROLE), prepared_statements="on")


def _open_embedded(
    server: embedded.RunningServer, database: str
) -> psycopg.Connection[tuple[object, ...]]:
    import psycopg

    try:
        return open_connection(server.url(database), prepared_statements="on")
    except DatabaseUnavailable as exc:
        if not isinstance(exc.__context__, psycopg.OperationalError) or (
            f'database "{database}" does not exist' not in str(exc)
        ):
            raise
    create_embedded_database(server, database)
    return open_connection(server.url(database), prepared_statements="on")


def create_embedded_database(server: embedded.RunningServer, database: str) -> None:
    """Create a database in the embedded server; a racing creator may win."""
    import psycopg
    from psycopg import sql

    with (
        open_connection(server.url("postgres"), prepared_statements="on") as admin,
        suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation),
    ):
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
