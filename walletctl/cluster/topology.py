"""Is this connection a PL/Proxy proxy, and where are its partitions: decided here only.

A proxy database (walletctl/sql/proxy/proxy.sql) keeps its partitions' connect strings in
PL/Proxy's cluster configuration; walletctl reads them from there, so the proxy is the one
place that says where the ledger lives. The answer is remembered per connection: the first
question costs one query, later ones nothing.

A partition is an ordinary walletctl database. Its number is written in its transaction
ids: partition p of N numbers its transactions p, p + N, p + 2N, ... (its identity column
starts at p and increments by N), so an id alone names its partition, and a database
always knows which partition it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from weakref import WeakKeyDictionary

from psycopg.conninfo import conninfo_to_dict

from walletctl.core.models import Connection
from walletctl.core.sqlerrors import translated
from walletctl.errors import DatabaseUnavailable

CLUSTER_NAME = "walletctl"
"""The PL/Proxy cluster name the proxy's functions run on (CLUSTER 'walletctl')."""


@dataclass(frozen=True, slots=True)
class Partition:
    number: int
    connstr: str
    """libpq key=value form, without user or password: walletctl adds the user that logged
    in to the proxy, as PL/Proxy does."""

    @property
    def label(self) -> str:
        """How messages name it: its number and database (``partition 2 (wallet_p2)``)."""
        dbname = conninfo_to_dict(self.connstr).get("dbname", "?")
        host = conninfo_to_dict(self.connstr).get("host", "")
        where = f"{dbname}@{host}" if host else str(dbname)
        return f"partition {self.number} ({where})"


@dataclass(frozen=True, slots=True)
class Topology:
    partitions: tuple[Partition, ...]

    @property
    def count(self) -> int:
        return len(self.partitions)

    def of_transaction(self, transaction_id: int) -> Partition:
        """The partition that holds a transaction: its id modulo the number of partitions."""
        return self.partitions[transaction_id % self.count]


_topologies: WeakKeyDictionary[Connection, Topology | None] = WeakKeyDictionary()

_IS_PROXY_SQL = """
SELECT to_regprocedure('plproxy.get_cluster_partitions(text)') IS NOT NULL
   AND to_regprocedure('public.walletctl_partitions()') IS NOT NULL
"""


def topology(conn: Connection) -> Topology | None:
    """The proxy's partitions; None when ``conn`` is not a walletctl proxy (one query)."""
    if conn in _topologies:
        return _topologies[conn]
    found = None
    with translated():
        row = conn.execute(_IS_PROXY_SQL).fetchone()
        if row is not None and row[0]:
            connstrs = conn.execute(
                "SELECT plproxy.get_cluster_partitions(%s)", (CLUSTER_NAME,)
            ).fetchall()
            found = Topology(tuple(Partition(n, text) for n, (text,) in enumerate(connstrs)))
    _topologies[conn] = found
    return found


def forget(conn: Connection) -> None:
    """Read the configuration again on the next question (after it was changed)."""
    _topologies.pop(conn, None)


def user_partition(conn: Connection, found: Topology, user_id: str) -> Partition:
    """The partition that holds ``user_id``: PL/Proxy's hashtext(user) & (N - 1), computed by
    the proxy itself so that walletctl and PL/Proxy cannot disagree."""
    with translated():
        row = conn.execute("SELECT walletctl_user_partition(%s)", (user_id,)).fetchone()
    assert row is not None
    return found.partitions[int(row[0])]


def partition_identity(conn: Connection) -> tuple[int, int]:
    """(increment, first id) of a ledger's transaction ids: (N, p) on partition p of N
    (first id N for partition 0), (1, 1) on a database that is no partition."""
    with translated():
        row = conn.execute(
            "SELECT s.seqincrement, s.seqstart FROM pg_sequence s "
            "WHERE s.seqrelid = pg_get_serial_sequence('transactions', 'id')::regclass"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def check_identity(conn: Connection, partition: Partition, count: int) -> None:
    """Refuse a database that is not partition ``partition.number`` of ``count``: a
    configuration that names the wrong database would put users where no one finds them."""
    increment, start = partition_identity(conn)
    if increment != count or start % count != partition.number:
        raise DatabaseUnavailable(
            f"{partition.label} is not partition {partition.number} of {count}: its "
            f"transaction ids increment by {increment} from {start} "
            "(run `walletctl cluster create` with the partitions in their order)"
        )


@contextmanager
def connect_partition(
    proxy: Connection, found: Topology, partition: Partition, *, check_schema: bool = True
) -> Iterator[Connection]:
    """A connection to one partition as the role that logged in to the proxy (with its
    password, if the proxy's connection had one; otherwise libpq's ~/.pgpass), checked to be
    the partition it should be and at the schema this walletctl needs."""
    import psycopg

    from walletctl.database import (
        CONNECT_TIMEOUT_SECONDS,
        behind_pooler,
        require_current_schema,
    )

    try:
        conn = psycopg.connect(
            partition.connstr,
            autocommit=True,
            user=proxy.info.user,
            password=proxy.info.password or None,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            application_name="walletctl",
        )
    except psycopg.Error as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[0] if lines else type(exc).__name__
        raise DatabaseUnavailable(f"cannot connect to {partition.label}: {reason}") from None
    try:
        if behind_pooler(conn):  # a PgBouncer in front of the partition, as PL/Proxy advises
            conn.prepare_threshold = None
        check_identity(conn, partition, found.count)
        if check_schema:
            require_current_schema(conn)
        yield conn
    finally:
        conn.close()
