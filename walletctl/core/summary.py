"""Period summaries for finance: what was issued, spent and reversed, per asset."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import validation
from walletctl.core.models import Connection
from walletctl.core.sqlerrors import translated
from walletctl.errors import AssetNotFound

# Movements per asset in [since, until) and, for the outstanding balance at the end of the
# period, in [until, now): outstanding at the end = outstanding now - what moved after it.
# A reversal's effect has the sign of the balance change it caused: + when it gave credits
# back (a reversed spend), - when it took them back (a reversed top-up or bonus).
_SUMMARY_SQL = """
WITH moves AS (
    SELECT t.asset_id,
           t.created_at >= %(since)s AND t.created_at < %(until)s AS in_period,
           t.kind,
           CASE t.kind
               WHEN 'spend' THEN -t.amount
               WHEN 'reversal' THEN CASE target.kind WHEN 'spend' THEN t.amount ELSE -t.amount END
               ELSE t.amount
           END AS effect
    FROM transactions t
    LEFT JOIN transactions target ON target.id = t.reverses
    WHERE t.created_at >= %(since)s
      AND (%(asset)s::text IS NULL
           OR t.asset_id = (SELECT id FROM asset_types WHERE code = %(asset)s))
),
per_asset AS (
    SELECT asset_id,
           coalesce(sum(effect) FILTER (WHERE in_period AND kind = 'topup'), 0) AS topups,
           coalesce(sum(effect) FILTER (WHERE in_period AND kind = 'bonus'), 0) AS bonuses,
           coalesce(-sum(effect) FILTER (WHERE in_period AND kind = 'spend'), 0) AS spent,
           coalesce(sum(effect) FILTER (WHERE in_period AND kind = 'reversal'), 0) AS reversed,
           coalesce(sum(effect) FILTER (WHERE in_period), 0) AS net_change,
           coalesce(sum(effect) FILTER (WHERE NOT in_period), 0) AS after_period,
           count(*) FILTER (WHERE in_period) AS transactions
    FROM moves
    GROUP BY asset_id
),
outstanding_now AS (
    SELECT asset_id, sum(balance) AS outstanding FROM balances GROUP BY asset_id
)
SELECT s.code AS asset,
       coalesce(p.topups, 0)::bigint AS issued_topup,
       coalesce(p.bonuses, 0)::bigint AS issued_bonus,
       coalesce(p.spent, 0)::bigint AS spent,
       coalesce(p.reversed, 0)::bigint AS reversed,
       coalesce(p.net_change, 0)::bigint AS net_change,
       (coalesce(o.outstanding, 0) - coalesce(p.after_period, 0) - coalesce(p.net_change, 0))
           ::bigint AS outstanding_start,
       (coalesce(o.outstanding, 0) - coalesce(p.after_period, 0))::bigint AS outstanding_end,
       coalesce(p.transactions, 0) AS transactions
FROM asset_types s
LEFT JOIN per_asset p ON p.asset_id = s.id
LEFT JOIN outstanding_now o ON o.asset_id = s.id
WHERE %(asset)s::text IS NULL OR s.code = %(asset)s
ORDER BY s.code
"""


@dataclass(frozen=True, slots=True)
class PeriodSummary:
    asset: str
    issued_topup: int
    issued_bonus: int
    spent: int
    reversed: int
    net_change: int
    outstanding_start: int
    outstanding_end: int
    transactions: int


@on_proxy("period_summary")
def period_summary(
    conn: Connection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    asset: str | None = None,
) -> list[PeriodSummary]:
    """Per asset, for transactions in [since, until): issued by top-up and by bonus, spent,
    reversed (net effect), net change, outstanding at the start and at the end, count."""
    start, end = validation.period(since, until)
    if asset is not None:
        validation.asset_code(asset)
    params = {"since": start, "until": end, "asset": asset}
    with translated(), conn.transaction(), conn.cursor(row_factory=class_row(PeriodSummary)) as cur:
        # One snapshot for the movements and the balances they are subtracted from.
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        rows = cur.execute(_SUMMARY_SQL, params).fetchall()
    if asset is not None and not rows:
        raise AssetNotFound(f"asset {asset} not found")
    return rows
