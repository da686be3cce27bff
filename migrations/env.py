"""Alembic environment: walletctl's own database resolution, one lock, one transaction."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from walletctl.errors import Busy
from walletctl.migrate import MIGRATION_LOCK_ID, MIGRATION_LOCK_WAIT_SECONDS, engine
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


# Who holds the migration lock (pg_advisory_xact_lock(bigint) keeps the key's high half in
# classid and its low half in objid).
LOCK_HOLDER_SQL = """
SELECT a.pid, a.usename, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.classid::bigint << 32) | l.objid::bigint) = :id
"""


def _take_migration_lock(connection: Connection) -> None:
    """Two walletctl processes meeting a fresh database (the embedded default) would both
    try to create the schema: the second waits here, then finds it current. Any role can
    take an advisory lock, so the wait is bounded and its refusal names the holder."""
    key = {"id": MIGRATION_LOCK_ID}
    if connection.execute(text("SELECT pg_try_advisory_xact_lock(:id)"), key).scalar():
        return
    holder = connection.execute(text(LOCK_HOLDER_SQL), key).first()
    wait = float(config.attributes.get("lock_wait_seconds", MIGRATION_LOCK_WAIT_SECONDS))
    connection.execute(text(f"SET LOCAL lock_timeout = '{max(int(wait * 1000), 1)}ms'"))
    try:
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), key)
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        # Of another role's session, only a superuser or pg_read_all_stats sees more than
        # its process and role.
        since = (
            f", connected since {holder.backend_start:%Y-%m-%d %H:%M:%S%z}"
            if holder is not None and holder.backend_start is not None
            else ""
        )
        who = (
            f"process {holder.pid} (role {holder.usename}{since})"
            if holder is not None
            else "another session (a prepared transaction, or one that has just ended)"
        )
        raise Busy(
            f"the migration lock was held for {wait:g} s by {who}: another upgrade still "
            "running, or a session holding it; if it is not an upgrade, end it (SELECT "
            "pg_terminate_backend(pid)) and run again. Nothing was changed"
        ) from None
    connection.execute(text("RESET lock_timeout"))


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
            _take_migration_lock(connection)
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
