"""Connections: reach the database the configuration names, and check its schema.

Every command goes through :func:`connect`, so "database unreachable" and "schema behind"
are decided in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from walletctl import embedded
from walletctl.config import DatabaseTarget, mask_url
from walletctl.errors import DatabaseUnavailable, InvalidInput, SchemaOutOfDate

if TYPE_CHECKING:
    import psycopg

SCHEMA_HEAD = "0005"
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


def target_url(target: DatabaseTarget) -> str:
    """The URL to connect to. For the embedded target: start the server (first time:
    initialise it) and create walletctl's database in it."""
    if target.url is not None:
        return target.url
    url, conn = _embedded(target)
    conn.close()
    return url


def _embedded(target: DatabaseTarget) -> tuple[str, psycopg.Connection[tuple[object, ...]]]:
    assert target.data_dir is not None
    url = embedded.ensure_running(target.data_dir).url()
    return url, _open_embedded(url)


def open_connection(url: str, *, autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
    """A psycopg connection, with connection failures turned into DatabaseUnavailable."""
    import psycopg

    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            application_name="walletctl",
        )
    except psycopg.ProgrammingError as exc:  # libpq could not parse the URL
        raise InvalidInput(
            f"malformed database URL {mask_url(url)!r}: {_first_line(exc)}"
        ) from None
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {mask_url(url)}: {_first_line(exc)}"
        ) from None


def schema_state(conn: psycopg.Connection[tuple[object, ...]]) -> SchemaState:
    from walletctl.core.sqlerrors import translated

    # A role that is a member of no walletctl role may not even read the revision: that is
    # NotPermitted (exit 10), said before anything else.
    with translated():
        row = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            return SchemaState(None)
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return SchemaState(str(version[0]) if version else None)


def require_current_schema(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    state = schema_state(conn)
    if state.current:
        return
    if state.revision is None:
        raise SchemaOutOfDate(
            "the database has no walletctl schema; run `walletctl db upgrade` first"
        )
    raise SchemaOutOfDate(
        f"the database schema is at revision {state.revision}, this walletctl needs "
        f"{SCHEMA_HEAD}; run `walletctl db upgrade`"
    )


@contextmanager
def connect(target: DatabaseTarget) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to a database whose schema is current.

    The embedded database belongs to walletctl, so it is created and migrated on the spot;
    a server named by URL is never changed without `walletctl db upgrade`.
    """
    if target.url is None:
        url, conn = _embedded(target)
    else:
        url = target.url
        conn = open_connection(url)
    try:
        if target.embedded and not schema_state(conn).current:
            from walletctl import migrate

            migrate.upgrade(url)
        require_current_schema(conn)
        yield conn
    finally:
        conn.close()


def _open_embedded(url: str) -> psycopg.Connection[tuple[object, ...]]:
    import psycopg

    try:
        return open_connection(url)
    except DatabaseUnavailable as exc:
        if not isinstance(exc.__context__, psycopg.OperationalError) or (
            f'database "{embedded.EMBEDDED_DATABASE}" does not exist' not in str(exc)
        ):
            raise
    create_embedded_database(url)
    return open_connection(url)


def create_embedded_database(url: str) -> None:
    """Create the walletctl database in the embedded server; a racing creator may win."""
    import psycopg

    maintenance_url = url.replace(f"/{embedded.EMBEDDED_DATABASE}?", "/postgres?", 1)
    with (
        open_connection(maintenance_url) as admin,
        suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation),
    ):
        admin.execute(f'CREATE DATABASE "{embedded.EMBEDDED_DATABASE}"')


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
