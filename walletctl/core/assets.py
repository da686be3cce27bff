"""Asset types (GOLD, POINTS, ...): added by a command, never deleted."""

from __future__ import annotations

from psycopg.rows import class_row

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import validation
from walletctl.core.models import Asset, Connection
from walletctl.core.sqlerrors import translated
from walletctl.errors import AlreadyExists


def add_asset(conn: Connection, code: str, name: str) -> Asset:
    """Create an asset type. Raises AlreadyExists when the code is taken."""
    params = (validation.asset_code(code), validation.asset_name(name))
    with translated(), conn.cursor(row_factory=class_row(Asset)) as cursor:
        asset = cursor.execute(
            "SELECT code, name, created_at FROM walletctl_add_asset(%s, %s)", params
        ).fetchone()
    if asset is None:
        raise AlreadyExists(f"asset {code} already exists")
    return asset


@on_proxy("list_assets")
def list_assets(conn: Connection) -> list[Asset]:
    with translated(), conn.cursor(row_factory=class_row(Asset)) as cursor:
        return cursor.execute(
            "SELECT code, name, created_at FROM asset_types ORDER BY code"
        ).fetchall()
