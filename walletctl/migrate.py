"""Running alembic's migrations from walletctl (``walletctl db upgrade`` and the tests).

Imported only when the schema has to change or be compared: alembic and SQLAlchemy take
about a second to import on a small machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Engine

MIGRATION_LOCK_ID = 0x77616C6C6574  # "wallet": serialises concurrent upgrades
MIGRATION_LOCK_WAIT_SECONDS = 60.0
"""How long an upgrade waits for another to finish. The lock is an advisory lock, which
any role that connects can also take: past this, the upgrade gives up naming the holder,
rather than waiting for ever on someone who will never let go."""


def migrations_dir() -> Path:
    """The alembic folder: inside the package when installed from a wheel, at the top of
    the checkout otherwise."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("walletctl's migrations are missing from this installation")


def engine(conninfo: str) -> Engine:
    """A SQLAlchemy engine (psycopg 3) on ``conninfo``, any libpq form, handed to libpq as
    written: SQLAlchemy's own URLs cannot hold a keyword/value string, a service or an
    empty string that leaves everything to the PG* variables. No server-side prepared
    statements (nothing here runs often enough to gain, and a pooler may be in between)."""
    import psycopg
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    def connect() -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            conninfo, prepare_threshold=None, fallback_application_name="walletctl"
        )

    return create_engine("postgresql+psycopg://", creator=connect, poolclass=NullPool)


def alembic_config(url: str, lock_wait_seconds: float = MIGRATION_LOCK_WAIT_SECONDS) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["url"] = url
    config.attributes["lock_wait_seconds"] = lock_wait_seconds
    return config


def upgrade(
    url: str, revision: str = "head", *, lock_wait_seconds: float = MIGRATION_LOCK_WAIT_SECONDS
) -> None:
    """Migrate to ``revision``. A refusal by the database (a role that may not migrate, say)
    is raised as walletctl's typed error, NotPermitted for a missing privilege; Busy when
    the migration lock stays held for ``lock_wait_seconds``, naming who holds it."""
    from alembic import command
    from sqlalchemy.exc import DBAPIError

    from walletctl.core.sqlerrors import raise_translated

    try:
        command.upgrade(alembic_config(url, lock_wait_seconds), revision)
    except DBAPIError as exc:
        import psycopg

        if isinstance(exc.orig, psycopg.Error):
            raise_translated(exc.orig)
        raise


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config("")).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"expected one migration head, found {heads}")
    return heads[0]
