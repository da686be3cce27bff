"""Period reports for finance: what was issued, spent and reversed per asset, and per
operator (the recorded actor), asset and kind."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import validation
from walletctl.core.history import check_kind
from walletctl.core.models import Connection
from walletctl.core.sqlerrors import translated
from walletctl.errors import AssetNotFound


@dataclass(frozen=True, slots=True)
class ReportFilter:
    """Which transactions a report counts, besides its period and asset.

    ``actor`` matches the recorded actor: the database role that posted (session_user),
    the one identity a flag cannot choose. ``on_behalf_of`` matches the note a posting
    carried (the CLI's --actor); ``reason`` a reason exactly; ``kind`` one kind."""

    kind: str | None = None
    actor: str | None = None
    on_behalf_of: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        check_kind(self.kind)

    @property
    def selects_all(self) -> bool:
        return self == ReportFilter()

    def params(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "actor": self.actor,
            "on_behalf_of": self.on_behalf_of,
            "reason": self.reason,
        }


# The filters on transactions, shared by every report and the exports. A NULL filter is
# folded away when the plan is made, so an unfiltered report reads as before.
TRANSACTION_FILTER_SQL = """
      AND (%(kind)s::text IS NULL OR t.kind = %(kind)s)
      AND (%(actor)s::text IS NULL OR t.actor = %(actor)s)
      AND (%(on_behalf_of)s::text IS NULL OR t.on_behalf_of = %(on_behalf_of)s)
      AND (%(reason)s::text IS NULL OR t.reason = %(reason)s)
"""

# A transaction's effect on what users hold: + for a top-up or bonus, - for a spend; a
# reversal the opposite of what it reverses (models.balance_change, in SQL).
_EFFECT_SQL = """
CASE t.kind
    WHEN 'spend' THEN -t.amount
    WHEN 'reversal' THEN CASE target.kind WHEN 'spend' THEN t.amount ELSE -t.amount END
    ELSE t.amount
END
"""

# Movements per asset in [since, until) and, for the outstanding balance at the end of the
# period, in [until, now): outstanding at the end = outstanding now - what moved after it.
# The transactions are found by time through the BRIN index ix_transactions_created_at.
_SUMMARY_SQL = (
    """
WITH moves AS (
    SELECT t.asset_id,
           t.created_at >= %(since)s AND t.created_at < %(until)s AS in_period,
           t.kind, target.kind AS reversed_kind, t.amount,
"""
    + _EFFECT_SQL
    + """ AS effect
    FROM transactions t
    LEFT JOIN transactions target ON target.id = t.reverses
    WHERE t.created_at >= %(since)s
      AND (%(asset)s::text IS NULL
           OR t.asset_id = (SELECT id FROM asset_types WHERE code = %(asset)s))
"""
    + TRANSACTION_FILTER_SQL
    + """
),
per_asset AS (
    SELECT asset_id,
           coalesce(sum(effect) FILTER (WHERE in_period AND kind = 'topup'), 0) AS topups,
           coalesce(sum(effect) FILTER (WHERE in_period AND kind = 'bonus'), 0) AS bonuses,
           coalesce(-sum(effect) FILTER (WHERE in_period AND kind = 'spend'), 0) AS spent,
           coalesce(sum(effect) FILTER (WHERE in_period AND kind = 'reversal'), 0) AS reversed,
           coalesce(sum(amount) FILTER (WHERE in_period AND reversed_kind = 'topup'), 0)
               AS reversed_topup,
           coalesce(sum(amount) FILTER (WHERE in_period AND reversed_kind = 'bonus'), 0)
               AS reversed_bonus,
           coalesce(sum(amount) FILTER (WHERE in_period AND reversed_kind = 'spend'), 0)
               AS reversed_spend,
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
       coalesce(p.reversed_topup, 0)::bigint AS reversed_topup,
       coalesce(p.reversed_bonus, 0)::bigint AS reversed_bonus,
       coalesce(p.reversed_spend, 0)::bigint AS reversed_spend,
       coalesce(p.net_change, 0)::bigint AS net_change,
       CASE WHEN %(whole)s THEN
           (coalesce(o.outstanding, 0) - coalesce(p.after_period, 0)
            - coalesce(p.net_change, 0))::bigint END AS outstanding_start,
       CASE WHEN %(whole)s THEN
           (coalesce(o.outstanding, 0) - coalesce(p.after_period, 0))::bigint END
           AS outstanding_end,
       coalesce(p.transactions, 0) AS transactions
FROM asset_types s
LEFT JOIN per_asset p ON p.asset_id = s.id
LEFT JOIN outstanding_now o ON o.asset_id = s.id
WHERE %(asset)s::text IS NULL OR s.code = %(asset)s
ORDER BY s.code
"""
)

# Per operator (the recorded actor), asset and kind: how many transactions and their net
# effect on what users hold, for transactions in [since, until).
_BY_ACTOR_SQL = (
    """
SELECT t.actor, s.code AS asset, t.kind, count(*) AS transactions,
       coalesce(sum("""
    + _EFFECT_SQL
    + """), 0)::bigint AS amount
FROM transactions t
JOIN asset_types s ON s.id = t.asset_id
LEFT JOIN transactions target ON target.id = t.reverses
WHERE t.created_at >= %(since)s AND t.created_at < %(until)s
  AND (%(asset)s::text IS NULL OR s.code = %(asset)s)
"""
    + TRANSACTION_FILTER_SQL
    + """
GROUP BY t.actor, s.code, t.kind
ORDER BY t.actor, s.code, t.kind
"""
)


@dataclass(frozen=True, slots=True)
class PeriodSummary:
    asset: str
    issued_topup: int
    issued_bonus: int
    spent: int
    reversed: int
    """The net effect of reversals on what users hold (+ a spend given back, - a credit
    taken back)."""
    reversed_topup: int
    """Top-ups reversed in the period (what was taken back, positive)."""
    reversed_bonus: int
    reversed_spend: int
    net_change: int
    outstanding_start: int | None
    """What users held at the start: None when a filter selects only some transactions."""
    outstanding_end: int | None
    transactions: int


@dataclass(frozen=True, slots=True)
class ActorTotal:
    """What one operator (database role) did with one asset and kind in a period."""

    actor: str
    asset: str
    kind: str
    transactions: int
    amount: int
    """The net effect on what users hold: negative for spends and reversed credits."""


@on_proxy("period_summary")
def period_summary(
    conn: Connection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    asset: str | None = None,
    where: ReportFilter | None = None,
) -> list[PeriodSummary]:
    """Per asset, for transactions in [since, until): issued by top-up and by bonus, spent,
    reversed (net effect, and per kind reversed), net change, outstanding at the start and
    at the end (the whole ledger's: None when ``where`` selects only some transactions),
    count."""
    where = where or ReportFilter()
    params = _period_params(since, until, asset, where)
    params["whole"] = where.selects_all
    with translated(), conn.transaction(), conn.cursor(row_factory=class_row(PeriodSummary)) as cur:
        # One snapshot for the movements and the balances they are subtracted from.
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        rows = cur.execute(_SUMMARY_SQL, params).fetchall()
    if asset is not None and not rows:
        raise AssetNotFound(f"asset {asset} not found")
    return rows


@on_proxy("by_actor")
def by_actor(
    conn: Connection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    asset: str | None = None,
    where: ReportFilter | None = None,
) -> list[ActorTotal]:
    """Per recorded actor, asset and kind, for transactions in [since, until): how many and
    their net effect on what users hold."""
    params = _period_params(since, until, asset, where or ReportFilter())
    with translated(), conn.cursor(row_factory=class_row(ActorTotal)) as cursor:
        rows = cursor.execute(_BY_ACTOR_SQL, params).fetchall()
    if asset is not None and not rows:
        known = conn.execute("SELECT 1 FROM asset_types WHERE code = %s", (asset,)).fetchone()
        if known is None:
            raise AssetNotFound(f"asset {asset} not found")
    return rows


def _period_params(
    since: datetime | None, until: datetime | None, asset: str | None, where: ReportFilter
) -> dict[str, Any]:
    start, end = validation.period(since, until)
    if asset is not None:
        validation.asset_code(asset)
    return {"since": start, "until": end, "asset": asset, **where.params()}
