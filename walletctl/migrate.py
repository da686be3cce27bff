"""Running alembic's migrations from walletctl (``walletctl db upgrade`` and the tests).

Imported only when the schema has to change or be compared: alembic and SQLAlchemy take
about a second to import on a small machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATION_LOCK_ID = 0x77616C6C6574  # "wallet": serialises concurrent upgrades


def migrations_dir() -> Path:
    """The alembic folder: inside the package when installed from a wheel, at the top of
    the checkout otherwise."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("walletctl's migrations are missing from this installation")


def sqlalchemy_url(url: str) -> str:
    """The libpq URL walletctl uses, in the form SQLAlchemy needs to pick psycopg 3."""
    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate to ``revision``. A refusal by the database (a role that may not migrate, say)
    is raised as walletctl's typed error, NotPermitted for a missing privilege."""
    from alembic import command
    from sqlalchemy.exc import DBAPIError

    from walletctl.core.sqlerrors import raise_translated

    try:
        command.upgrade(alembic_config(url), revision)
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
