"""The tripwire: signs, read without re-hashing the history, that sealed rows may have
changed since the last seal. When one shows, reconcile re-hashes all sealed history (which
names what changed, if anything did).

What it compares with the references the last checkpoint recorded (walletctl_seal):

- the files behind the ledger tables: TRUNCATE, VACUUM FULL, CLUSTER and other rewrites
  give a table a new file;
- PostgreSQL's statistics: rows updated or deleted in the ledger tables (append-only
  tables never change that count), rows inserted (a count that only grows), and when this
  database's statistics were last reset (any reset, of one table or of all, moves it);
- the rows stored from the last heap page the seal saw onwards: a row of a sealed
  transaction there written by a database transaction the seal's snapshot did not see is an
  edit made after the seal (an UPDATE writes a new row version, usually at the end of the
  table) or a row committed late below the horizon. Reading them is a TID range scan over
  the pages written since the seal, so it costs what the rows posted since then cost.

What it cannot see (README, "Known limits"): a superuser can switch the statistics off for
a session (SET track_counts = off), a crash loses them without a reset time, an edit can
land on a sealed page that has room (or a DELETE leaves no new row at all), and a superuser
can rewrite these references themselves. ``reconcile --full`` re-hashes everything and is
the check none of that escapes, against the hash kept outside the database.
"""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row

from walletctl.core.checkpoints import Checkpoint
from walletctl.core.models import Connection

EXAMPLES = 5

_FILES_AND_STATISTICS_SQL = """
SELECT pg_relation_filenode('transactions') AS transactions_filenode,
       pg_relation_filenode('ledger_entries') AS ledger_entries_filenode,
       coalesce(sum(s.n_tup_upd + s.n_tup_del), 0)::bigint AS ledger_changes,
       coalesce(sum(s.n_tup_ins), 0)::bigint AS ledger_inserts,
       (SELECT d.stats_reset FROM pg_stat_database d WHERE d.datname = current_database())
           AS stats_reset,
       pg_is_in_recovery() AS standby
FROM pg_stat_user_tables s
WHERE s.schemaname = 'public' AND s.relname IN ('transactions', 'ledger_entries')
"""

# Rows of sealed transactions stored from the seal's last page on, written by a database
# transaction the seal's snapshot did not see. xmin is a 32-bit transaction id; it is
# widened to the 64-bit id pg_visible_in_snapshot wants from the current epoch, which is
# exact for rows written within 2^32 transactions of now (these rows are recent: the last
# page at the seal, and what came after it). Ids 0-2 are PostgreSQL's permanent ids (rows
# frozen by very old versions): older than any seal.
_WRITTEN_AFTER_SEAL_SQL = """
WITH now AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax),
stored AS (
    SELECT t.id AS transaction_id, t.xmin::text::bigint AS xmin
    FROM transactions t
    WHERE t.ctid >= %(transactions_from)s::tid AND t.id <= %(horizon)s
    UNION ALL
    SELECT e.transaction_id, e.xmin::text::bigint
    FROM ledger_entries e
    WHERE e.ctid >= %(entries_from)s::tid AND e.transaction_id <= %(horizon)s
),
late AS (
    SELECT DISTINCT s.transaction_id
    FROM stored s, now
    WHERE s.xmin > 2
      AND NOT pg_visible_in_snapshot(
              (now.xmax - (now.xmax - s.xmin) %% 4294967296)::text::xid8,
              %(snapshot)s::pg_snapshot)
)
SELECT count(*) AS transactions,
       (array_agg(transaction_id ORDER BY transaction_id))[1:%(examples)s] AS examples
FROM late
"""


def tripwire(conn: Connection, checkpoint: Checkpoint | None) -> list[str]:
    """Why sealed rows may have changed since ``checkpoint`` (the last one); [] for none."""
    if checkpoint is None:
        return []
    with conn.cursor(row_factory=dict_row) as cursor:
        now = cursor.execute(_FILES_AND_STATISTICS_SQL).fetchone()
    assert now is not None
    reasons = []
    if (now["transactions_filenode"], now["ledger_entries_filenode"]) != (
        checkpoint.transactions_filenode,
        checkpoint.ledger_entries_filenode,
    ):
        reasons.append("a ledger table was truncated or rewritten since the last seal")
    if now["standby"]:
        # A standby's statistics count only its own writes (none) and keep their own reset
        # time: they say nothing of what the primary changed, so only re-hashing can vouch
        # for sealed history here (and a reason is all it takes to re-hash).
        reasons.append(
            "on a standby PostgreSQL does not count the rows the primary updated or deleted"
        )
        return reasons
    if now["ledger_changes"] != checkpoint.ledger_changes:
        reasons.append(
            f"PostgreSQL counted {now['ledger_changes'] - checkpoint.ledger_changes:+} updated "
            "or deleted ledger rows since the last seal"
        )
    if checkpoint.snapshot is None:  # sealed before migration 0006: nothing more recorded
        return reasons
    if now["stats_reset"] != checkpoint.stats_reset:
        reasons.append(
            "PostgreSQL's statistics of this database were reset since the last seal (at "
            f"{now['stats_reset']}), so its counts of changed rows prove nothing"
        )
    if checkpoint.ledger_inserts is not None and now["ledger_inserts"] < checkpoint.ledger_inserts:
        reasons.append(
            "PostgreSQL counts fewer inserted ledger rows than when sealed: its statistics "
            "were lost (a crash) or reset"
        )
    late = _written_after_seal(conn, checkpoint)
    if late is not None:
        reasons.append(late)
    return reasons


def _written_after_seal(conn: Connection, checkpoint: Checkpoint) -> str | None:
    assert checkpoint.transactions_last_page is not None
    assert checkpoint.ledger_entries_last_page is not None
    params: dict[str, Any] = {
        "horizon": checkpoint.horizon,
        "snapshot": checkpoint.snapshot,
        "transactions_from": f"({checkpoint.transactions_last_page},0)",
        "entries_from": f"({checkpoint.ledger_entries_last_page},0)",
        "examples": EXAMPLES,
    }
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(_WRITTEN_AFTER_SEAL_SQL, params).fetchone()
    assert row is not None
    if not row["transactions"]:
        return None
    named = ", ".join(str(i) for i in row["examples"])
    more = f" and {row['transactions'] - EXAMPLES} more" if row["transactions"] > EXAMPLES else ""
    return (
        f"rows of sealed transaction(s) {named}{more} were written after checkpoint "
        f"{checkpoint.id} sealed them (edited since, or committed late below its horizon)"
    )
