"""Build a walletctl database from the current SQL (walletctl/sql/ and the tables in
walletctl/schema.py), without the migrations: what the migrations must also arrive at.

Used by tests/test_sql_home.py to compare the two catalogs; imports SQLAlchemy.
"""

from __future__ import annotations

import psycopg

from walletctl import migrate, roles
from walletctl.database import SCHEMA_HEAD
from walletctl.schema import TREASURY_ACCOUNT_ID, metadata


def build_current(url: str) -> None:
    """Create the schema as this walletctl defines it today, stamped at its head."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(roles.read_sql("roles"))
    engine = migrate.engine(url)
    metadata.create_all(engine)
    engine.dispose()
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE alembic_version (version_num varchar(32) NOT NULL, "
            "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
        )
        conn.execute("INSERT INTO alembic_version VALUES (%s)", (SCHEMA_HEAD,))
        conn.execute(
            "INSERT INTO accounts (id, external_id) VALUES (%s, NULL)", (TREASURY_ACCOUNT_ID,)
        )
        for name in roles.SQL_FILES:
            conn.execute(roles.read_sql(name))
