"""How far behind a standby is: what walletctl measures on every report read from one.

A streaming standby knows how much of its primary's WAL it has received and how much it has
replayed, and the primary's commit time of the last transaction it replayed. From those:

- it has replayed everything it received, and is receiving: 0 s behind (to within the
  time WAL takes to arrive, which streaming keeps short);
- it has received WAL it has not replayed yet: as far behind as the time since the last
  commit it replayed (an upper bound: after a quiet spell on the primary it overstates,
  so the measurement waits a moment for replay to catch up before it concludes);
- it is not receiving (its primary is unreachable, or it restores from an archive only):
  how far behind it is cannot be known; the last replayed commit is still reported.

"Everything it received" cannot tell a standby whose stream has stalled (a walsender or a
network path that hangs keeps the receiver's status `streaming` until
wal_receiver_timeout, a minute by default) from one that is caught up. So under
--max-lag, when the primary answers, the measure compares with the primary's own flushed
WAL position, read just before: replayed up to it, 0 s behind; short of it, as far behind
as the time since the last replayed commit.

Times compare the standby's clock with the primary's commit times: keep the clocks in sync
(NTP), as replication monitoring always assumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from walletctl.core.models import Connection
from walletctl.errors import StandbyTooFarBehind

SETTLE_SECONDS = 0.25
"""How long a measurement waits for a standby that has WAL left to replay to catch up,
before it reports the time since its last replayed commit."""

_SAMPLE_SQL = """
SELECT pg_is_in_recovery(),
       coalesce(pg_last_wal_replay_lsn() >= %(primary_lsn)s::pg_lsn,
                pg_last_wal_receive_lsn() IS NOT NULL
                    AND pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()),
       pg_last_xact_replay_timestamp(),
       greatest(extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()), 0),
       receiver.pid IS NOT NULL AND coalesce(receiver.status = 'streaming', true)
FROM (SELECT 1) AS one
LEFT JOIN pg_stat_wal_receiver AS receiver ON true
"""
# pg_stat_wal_receiver shows its status only to superusers and pg_read_all_stats; other
# roles see the receiver's pid, which at least says that one is running.


@dataclass(frozen=True, slots=True)
class ReadServer:
    """The server a report read from, and how far behind its primary it was."""

    server: str
    """Where the connection landed (host:port, or the socket folder and port)."""
    standby: bool
    lag_seconds: float | None
    """0 on a primary; None when a standby cannot tell (it is not receiving WAL)."""
    last_replayed_commit: datetime | None = None
    receiving: bool = True

    def describe(self) -> str:
        """One line for stderr."""
        if not self.standby:
            return (
                f"read from {self.server}, which is a primary, not a standby (the read URL "
                "reached a primary)"
            )
        if self.lag_seconds is None:
            last = (
                f"; its last replayed commit is from {self.last_replayed_commit.isoformat()}"
                if self.last_replayed_commit
                else ""
            )
            return (
                f"read from the standby {self.server}: how far behind its primary it is "
                f"cannot be known, it is not receiving WAL{last}"
            )
        return f"read from the standby {self.server}: {self.lag_seconds:.1f} s behind its primary"

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "standby": self.standby,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "receiving": self.receiving,
            "last_replayed_commit": self.last_replayed_commit,
        }


def measure(
    conn: Connection,
    *,
    primary_lsn: str | None = None,
    settle_seconds: float = SETTLE_SECONDS,
) -> ReadServer:
    """Where ``conn`` reads, and how far behind its primary that is (see the module);
    ``primary_lsn``: the primary's flushed WAL position (primary_flush_lsn), when known."""
    deadline = time.monotonic() + settle_seconds
    while True:
        row = conn.execute(_SAMPLE_SQL, {"primary_lsn": primary_lsn}).fetchone()
        assert row is not None
        standby, caught_up, replayed_at, since_commit, receiving = row
        if not standby:
            return ReadServer(_where(conn), False, 0.0)
        if caught_up and primary_lsn is not None:
            return ReadServer(_where(conn), True, 0.0, replayed_at, receiving=bool(receiving))
        if not receiving:
            return ReadServer(_where(conn), True, None, replayed_at, receiving=False)
        if caught_up:
            return ReadServer(_where(conn), True, 0.0, replayed_at)
        if time.monotonic() >= deadline:
            lag = None if since_commit is None else float(since_commit)
            return ReadServer(_where(conn), True, lag, replayed_at)
        time.sleep(0.02)


def primary_flush_lsn(primary: Connection) -> str:
    """The primary's WAL position flushed to its disk: a standby that has replayed up to it
    holds every commit the primary had made when it was read."""
    row = primary.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def require_within(server: ReadServer, max_lag: float | None) -> None:
    """Raise StandbyTooFarBehind when ``server`` is further behind than ``max_lag`` seconds
    (or cannot tell how far behind it is); nothing to check without a limit."""
    if max_lag is None or not server.standby:
        return
    if server.lag_seconds is None:
        raise StandbyTooFarBehind(
            f"the standby {server.server} cannot tell how far behind its primary it is (it is "
            f"not receiving WAL), so --max-lag {max_lag:g} cannot be met; nothing was read "
            "(run it with --primary, or when the standby streams again)"
        )
    if server.lag_seconds > max_lag:
        raise StandbyTooFarBehind(
            f"the standby {server.server} is {server.lag_seconds:.1f} s behind its primary, "
            f"more than --max-lag {max_lag:g}; nothing was read (run it again later, or with "
            "--primary)"
        )


def _where(conn: Connection) -> str:
    info = conn.info
    host = info.host
    return f"{host}:{info.port}" if not host.startswith("/") else f"{host} port {info.port}"
