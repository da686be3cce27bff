"""Setting up and looking after a cluster: `walletctl cluster create|move|status`.

Run with a superuser's URLs (PL/Proxy is an untrusted language: only a superuser creates
its functions, and only a superuser changes a partition's identity column).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from walletctl.cluster import proxy_sql
from walletctl.cluster.topology import (
    Partition,
    Topology,
    check_identity,
    partition_identity,
    topology,
)
from walletctl.conninfo import masked, scrubbed_error
from walletctl.core.models import Connection
from walletctl.core.sqlerrors import translated
from walletctl.errors import InvalidInput, Refused


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    number: int
    connstr: str
    reachable: bool
    schema_revision: str | None
    size_bytes: int | None
    users: int | None
    transactions: int | None
    problem: str | None


def partition_connstr(url: str) -> str:
    """A partition's connect string as the proxy stores it: the URL's host, port, database
    and options, without user and password (PL/Proxy and walletctl connect as the role that
    logged in to the proxy)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        reason = scrubbed_error(exc, url)
        raise InvalidInput(f"malformed partition URL {masked(url)!r}: {reason}") from None
    params.pop("user", None)
    params.pop("password", None)
    if "dbname" not in params:
        raise InvalidInput(f"partition URL {masked(url)!r} names no database")
    return make_conninfo(**{key: str(value) for key, value in params.items()})


def create(proxy_url: str, partition_urls: Sequence[str]) -> Topology:
    """Make each partition an ordinary walletctl database at head whose transaction ids say
    its number, then install the proxy's SQL and point its configuration at them.
    Idempotent: run again with the same partitions, it changes nothing; with a partition
    moved elsewhere (same number, same data), it points the proxy at the new place."""
    from walletctl import migrate
    from walletctl.database import open_connection

    count = len(partition_urls)
    if count < 1 or count & (count - 1):
        raise InvalidInput(
            f"the number of partitions must be a power of two (1, 2, 4, 8, ...), got {count}"
        )
    connstrs = [partition_connstr(url) for url in partition_urls]
    if len(set(connstrs)) != count:
        raise InvalidInput("two partitions name the same database")
    with open_connection(proxy_url) as proxy:
        existing = topology(proxy)
        if existing is not None and existing.count != count:
            raise Refused(
                f"the proxy has {existing.count} partitions; a cluster keeps its number of "
                "partitions (grow by moving partitions to new servers: walletctl cluster move)"
            )
    partitions = tuple(Partition(n, text) for n, text in enumerate(connstrs))
    for partition, url in zip(partitions, partition_urls, strict=True):
        migrate.upgrade(url)
        with open_connection(url) as conn:
            number_partition(conn, partition, count)
    with open_connection(proxy_url) as proxy:
        install_proxy(proxy, partitions)
        return Topology(partitions)


def number_partition(conn: Connection, partition: Partition, count: int) -> None:
    """Give a ledger partition ``partition.number``'s transaction ids (that number modulo
    ``count``), once; refuse a ledger holding users or transactions of another partition."""
    increment, _start = partition_identity(conn)
    if increment == count and count > 1:
        check_identity(conn, partition, count)
        return
    if increment != 1:
        raise Refused(
            f"{partition.label} is already a partition of a cluster of {increment} partitions"
        )
    if count == 1:
        return
    with translated(), conn.transaction():
        row = conn.execute(
            "SELECT (SELECT count(*) FROM accounts a WHERE a.external_id IS NOT NULL "
            "        AND hashtext(a.external_id) & (%(n)s - 1) <> %(p)s), "
            "       (SELECT count(*) FROM transactions t WHERE t.id %% %(n)s <> %(p)s), "
            "       (SELECT coalesce(max(t.id), 0) FROM transactions t)",
            {"n": count, "p": partition.number},
        ).fetchone()
        assert row is not None
        misplaced_users, misplaced_txns, last_id = row
        if misplaced_users or misplaced_txns:
            raise Refused(
                f"{partition.label} holds {misplaced_users} user(s) and {misplaced_txns} "
                f"transaction(s) that belong to other partitions of {count}; a partition "
                "starts empty (or as a copy of the same partition)"
            )
        first = partition.number or count
        restart = last_id + 1
        restart += (partition.number - restart) % count
        conn.execute(
            f"ALTER TABLE transactions ALTER COLUMN id SET INCREMENT BY {count:d} "
            f"SET START WITH {first:d} RESTART WITH {max(restart, first):d}"
        )


def install_proxy(proxy: Connection, partitions: Sequence[Partition]) -> None:
    """PL/Proxy, walletctl's group roles, the proxy's functions and its configuration, in
    one transaction; the configuration's version goes up only when it changed."""
    from walletctl import roles

    with translated(), proxy.transaction():
        proxy.execute("CREATE EXTENSION IF NOT EXISTS plproxy")
        proxy.execute(roles.read_sql("roles"))
        proxy.execute(proxy_sql.proxy_sql())
        current = [
            text
            for (text,) in proxy.execute(
                "SELECT connstr FROM plproxy.walletctl_partitions ORDER BY partition"
            ).fetchall()
        ]
        wanted = [partition.connstr for partition in partitions]
        if current != wanted:
            proxy.execute("DELETE FROM plproxy.walletctl_partitions")
            with proxy.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO plproxy.walletctl_partitions (partition, connstr) VALUES (%s, %s)",
                    [(partition.number, partition.connstr) for partition in partitions],
                )
            proxy.execute("UPDATE plproxy.walletctl_config_version SET version = version + 1")


def move(proxy_url: str, number: int, to_url: str) -> Partition:
    """Point the proxy's partition ``number`` at another database: a copy of that partition
    (pg_dump/pg_restore, or a logical replica caught up), checked to be that partition at
    this walletctl's schema before the configuration changes."""
    from walletctl.database import open_connection, require_current_schema

    with open_connection(proxy_url) as proxy:
        found = topology(proxy)
        if found is None:
            raise InvalidInput(f"{masked(proxy_url)} is not a walletctl proxy")
        if not 0 <= number < found.count:
            raise InvalidInput(f"partition must be 0-{found.count - 1}, got {number}")
        moved = Partition(number, partition_connstr(to_url))
        with open_connection(to_url) as target:
            require_current_schema(target)
            check_identity(target, moved, found.count)
        partitions = list(found.partitions)
        partitions[number] = moved
        install_proxy(proxy, partitions)
    return moved


def status(proxy: Connection) -> list[PartitionStatus]:
    """Each partition with its schema revision, size and counts, or why it cannot be read.
    Connects to each partition as the role logged in to the proxy."""
    from walletctl.cluster.topology import connect_partition
    from walletctl.errors import WalletError

    found = topology(proxy)
    if found is None:
        raise InvalidInput("this database is not a walletctl proxy (walletctl cluster create)")
    from walletctl.database import SCHEMA_HEAD

    result = []
    for partition in found.partitions:
        try:
            with connect_partition(proxy, found, partition, check_schema=False) as conn:
                row = conn.execute(_STATUS_SQL).fetchone()
        except (WalletError, psycopg.Error) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            result.append(
                PartitionStatus(partition.number, partition.connstr, False, *_UNKNOWN, reason)
            )
            continue
        assert row is not None
        revision, size, users, transactions = row
        behind = None if revision == SCHEMA_HEAD else f"schema is not at {SCHEMA_HEAD}"
        result.append(
            PartitionStatus(
                partition.number,
                partition.connstr,
                True,
                revision,
                size,
                users,
                transactions,
                behind,
            )
        )
    return result


_UNKNOWN = (None, None, None, None)
_STATUS_SQL = """
SELECT (SELECT version_num FROM alembic_version), pg_database_size(current_database()),
       (SELECT count(*) FROM accounts WHERE external_id IS NOT NULL),
       (SELECT count(*) FROM transactions)
"""
