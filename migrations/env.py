"""Alembic environment: walletctl's own database resolution, one lock, one transaction."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from walletctl.migrate import MIGRATION_LOCK_ID, engine
from walletctl.schema import metadata

config = context.config

SET_OWNER_ROLE_SQL = """
DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)
       AND EXISTS (SELECT FROM pg_roles WHERE rolname = 'walletctl_owner')
       AND pg_has_role(session_user, 'walletctl_owner', 'MEMBER') THEN
        SET LOCAL ROLE walletctl_owner;
    END IF;
END
$$
"""


def _database_url() -> str:
    # `walletctl db upgrade` hands over the URL it resolved; plain `alembic upgrade head`
    # from a checkout resolves it the same way walletctl does (option, env, config file,
    # embedded server).
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return str(url)
    from walletctl.config import load_settings, resolve_target
    from walletctl.database import target_url

    return target_url(resolve_target(None, load_settings()))


def run_migrations_offline() -> None:
    context.configure(
        url="postgresql+psycopg://",  # offline: SQL for PostgreSQL, no connection
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    database = engine(_database_url())
    with database.connect() as connection:
        context.configure(
            connection=connection, target_metadata=metadata, compare_server_default=True
        )
        with context.begin_transaction():
            # Two walletctl processes meeting a fresh database (the embedded default) would
            # both try to create the schema; the second waits here, then finds it current.
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            # A member of walletctl_owner that is not a superuser migrates as the owner, so
            # that what it creates belongs to walletctl_owner (a superuser's objects are
            # handed over by privileges.sql).
            connection.execute(text(SET_OWNER_ROLE_SQL))
            context.run_migrations()
    database.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
