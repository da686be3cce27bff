"""Operator controls: four-eyes approval of large credits, daily issuance budgets, frozen
users (walletctl/sql/controls.sql).

A library like the rest of the core: it takes a connection, returns dataclasses and raises
typed errors; it never prints. Every rule is enforced by the database for the identity that
logged in; this module only calls the functions of the SQL API and reads the policy tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from psycopg.rows import class_row

from walletctl.cluster.dispatch import on_proxy
from walletctl.core import validation
from walletctl.core.models import Connection, PostingKind, Receipt
from walletctl.core.sqlerrors import translated
from walletctl.errors import InvalidInput, RequestNotFound

RequestStatus = Literal["pending", "approved", "rejected", "expired"]
STATUSES: tuple[RequestStatus, ...] = ("pending", "approved", "rejected", "expired")
MAX_REQUEST_HOURS = 8760


@dataclass(frozen=True, slots=True)
class ApprovalPolicy:
    """An asset's approval threshold in force (None: no approval needed)."""

    asset: str
    approve_above: int | None
    request_hours: int
    set_by: str
    set_at: datetime


@dataclass(frozen=True, slots=True)
class Budget:
    """A role's daily issuance budget for an asset, and what it has used today (UTC)."""

    role: str
    asset: str
    daily_limit: int | None
    used_today: int
    set_by: str
    set_at: datetime

    @property
    def remaining(self) -> int | None:
        return None if self.daily_limit is None else max(self.daily_limit - self.used_today, 0)


@dataclass(frozen=True, slots=True)
class Freeze:
    """One freeze or unfreeze of a user, as recorded."""

    user_id: str
    frozen: bool
    reason: str
    actor: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class FiledRequest:
    """What filing a request did: a new request, or (replayed) the one its key filed."""

    request_id: int
    replayed: bool
    approve_above: int | None
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class CreditRequest:
    id: int
    kind: str
    user_id: str
    asset: str
    amount: int
    idempotency_key: str
    reason: str | None
    on_behalf_of: str | None
    requested_by: str
    created_at: datetime
    expires_at: datetime
    status: RequestStatus
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str | None
    transaction_id: int | None


@dataclass(frozen=True, slots=True)
class Decision:
    request_id: int
    decision: str
    decided_by: str
    reason: str | None
    created_at: datetime


def _role(value: object) -> str:
    return validation.identifier(value, "role")


def valid_request_id(value: object) -> int:
    """A request id: a positive whole number."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 2**63 - 1:
        raise InvalidInput(f"request id must be a positive whole number, got {value!r}")
    return value


def _optional_amount(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"a limit must be a whole number of at least 0, got {value!r}")
    if value > validation.MAX_AMOUNT:
        raise InvalidInput(f"a limit must be at most {validation.MAX_AMOUNT}, got {value}")
    return value


# Policy changes (walletctl_admin).


@on_proxy("operator_controls")
def set_approval(
    conn: Connection, asset: str, approve_above: int | None, *, request_hours: int = 24
) -> ApprovalPolicy:
    """Top-ups and bonuses of ``asset`` above ``approve_above`` need a second person's
    approval (None: never); a request expires after ``request_hours``."""
    if not 1 <= request_hours <= MAX_REQUEST_HOURS:
        raise InvalidInput(f"request hours must be 1-{MAX_REQUEST_HOURS}, got {request_hours}")
    params = (validation.asset_code(asset), _optional_amount(approve_above), request_hours)
    with translated(), conn.cursor(row_factory=class_row(ApprovalPolicy)) as cursor:
        row = cursor.execute(
            "SELECT asset, approve_above, request_hours, set_by, created_at AS set_at "
            "FROM walletctl_set_approval(%s, %s, %s)",
            params,
        ).fetchone()
    assert row is not None
    return row


@on_proxy("operator_controls")
def set_budget(conn: Connection, role: str, asset: str, daily_limit: int | None) -> Budget:
    """``role`` (and, for a group role, its members together) may credit at most
    ``daily_limit`` of ``asset`` per UTC day (None: no budget)."""
    params = (_role(role), validation.asset_code(asset), _optional_amount(daily_limit))
    with translated():
        conn.execute("SELECT walletctl_set_budget(%s, %s, %s)", params)
    return next(b for b in budgets(conn) if (b.role, b.asset) == (params[0], params[1]))


@on_proxy("operator_controls")
def freeze(conn: Connection, user_id: str, reason: str) -> Freeze:
    """Freeze a user: no spends and no credits (a reversal still posts) until unfrozen."""
    return _set_frozen(conn, "walletctl_freeze_user", user_id, reason)


@on_proxy("operator_controls")
def unfreeze(conn: Connection, user_id: str, reason: str) -> Freeze:
    return _set_frozen(conn, "walletctl_unfreeze_user", user_id, reason)


def _set_frozen(conn: Connection, function: str, user_id: str, reason: str) -> Freeze:
    params = (validation.user_id(user_id), validation.reason(reason, required=True))
    with translated(), conn.cursor(row_factory=class_row(Freeze)) as cursor:
        row = cursor.execute(
            f"SELECT user_id, frozen, reason, actor, created_at FROM {function}(%s, %s)",
            params,
        ).fetchone()
    assert row is not None
    return row


# Reading policy (every walletctl role but service).


@on_proxy("operator_controls")
def approval_policies(conn: Connection) -> list[ApprovalPolicy]:
    """The threshold in force per asset that has ever had one."""
    with translated(), conn.cursor(row_factory=class_row(ApprovalPolicy)) as cursor:
        return cursor.execute(
            "SELECT DISTINCT ON (p.asset) p.asset, p.approve_above, p.request_hours, "
            "p.set_by, p.created_at AS set_at "
            "FROM asset_policies p ORDER BY p.asset, p.id DESC"
        ).fetchall()


@on_proxy("operator_controls")
def budgets(conn: Connection) -> list[Budget]:
    """The budget in force per role and asset, with what it has used today (UTC)."""
    with translated(), conn.cursor(row_factory=class_row(Budget)) as cursor:
        return cursor.execute(
            """
            SELECT cur.role, cur.asset, cur.daily_limit, coalesce(u.used, 0) AS used_today,
                   cur.set_by, cur.created_at AS set_at
            FROM (
                SELECT DISTINCT ON (b.role, b.asset) b.*
                FROM issuance_budgets b ORDER BY b.role, b.asset, b.id DESC
            ) cur
            LEFT JOIN issuance_usage u
              ON u.role = cur.role AND u.asset = cur.asset
             AND u.day = (now() AT TIME ZONE 'UTC')::date
            ORDER BY cur.role, cur.asset
            """
        ).fetchall()


@on_proxy("binding_budgets")
def binding_budgets(conn: Connection, asset: str) -> list[Budget]:
    """The budgets of ``asset`` that bind the identity logged in (its own, and its group
    roles'), as walletctl_charge_issuance applies them."""
    with translated(), conn.cursor(row_factory=class_row(Budget)) as cursor:
        return cursor.execute(
            """
            SELECT cur.role, cur.asset, cur.daily_limit, coalesce(u.used, 0) AS used_today,
                   cur.set_by, cur.created_at AS set_at
            FROM (
                SELECT DISTINCT ON (b.role) b.*
                FROM issuance_budgets b WHERE b.asset = %s ORDER BY b.role, b.id DESC
            ) cur
            JOIN pg_roles bound ON bound.rolname = cur.role
            JOIN pg_roles me ON me.rolname = session_user
            LEFT JOIN issuance_usage u
              ON u.role = cur.role AND u.asset = cur.asset
             AND u.day = (now() AT TIME ZONE 'UTC')::date
            WHERE cur.daily_limit IS NOT NULL
              AND (me.oid = bound.oid
                   OR (NOT me.rolsuper AND pg_has_role(me.oid, bound.oid, 'MEMBER')))
            ORDER BY cur.role
            """,
            (validation.asset_code(asset),),
        ).fetchall()


@on_proxy("current_freeze")
def current_freeze(conn: Connection, user_id: str) -> Freeze | None:
    """The freeze in force on the user (None: not frozen)."""
    with translated(), conn.cursor(row_factory=class_row(Freeze)) as cursor:
        found = cursor.execute(
            "SELECT user_id, frozen, reason, actor, created_at FROM user_freezes "
            "WHERE user_id = %s ORDER BY id DESC LIMIT 1",
            (validation.user_id(user_id),),
        ).fetchone()
    return found if found is not None and found.frozen else None


@on_proxy("operator_controls")
def freezes(conn: Connection, user_id: str | None = None) -> list[Freeze]:
    """Every freeze and unfreeze (of one user, or all), oldest first."""
    with translated(), conn.cursor(row_factory=class_row(Freeze)) as cursor:
        return cursor.execute(
            "SELECT user_id, frozen, reason, actor, created_at FROM user_freezes "
            "WHERE %(user)s::text IS NULL OR user_id = %(user)s ORDER BY id",
            {"user": None if user_id is None else validation.user_id(user_id)},
        ).fetchall()


# Four-eyes approval.


@on_proxy("operator_controls")
def request_credit(
    conn: Connection,
    kind: PostingKind,
    user_id: str,
    amount: int,
    *,
    asset: str,
    idempotency_key: str,
    reason: str | None = None,
    on_behalf_of: str | None = None,
) -> FiledRequest:
    """File a top-up or bonus above its asset's threshold as a request (walletctl_operator)."""
    if kind not in ("topup", "bonus"):
        raise InvalidInput(f"only top-ups and bonuses need approval, not {kind}")
    params = (
        kind,
        validation.user_id(user_id),
        validation.asset_code(asset),
        validation.amount(amount),
        validation.idempotency_key(idempotency_key),
        validation.reason(reason, required=kind == "bonus"),
        validation.on_behalf_of(on_behalf_of),
    )
    with translated(), conn.cursor(row_factory=class_row(FiledRequest)) as cursor:
        row = cursor.execute(
            "SELECT * FROM walletctl_request_credit(%s, %s, %s, %s, %s, %s, %s)", params
        ).fetchone()
    assert row is not None
    return row


_REQUESTS_SQL = """
SELECT r.id, r.kind, r.user_id, r.asset, r.amount, r.idempotency_key, r.reason,
       r.on_behalf_of, r.requested_by, r.created_at, r.expires_at,
       CASE WHEN d.decision IS NOT NULL THEN d.decision
            WHEN r.expires_at <= now() THEN 'expired'
            ELSE 'pending' END AS status,
       d.decided_by, d.created_at AS decided_at, d.reason AS decision_reason, d.transaction_id
FROM credit_requests r
LEFT JOIN credit_request_decisions d ON d.request_id = r.id
WHERE (%(id)s::bigint IS NULL OR r.id = %(id)s)
"""


@on_proxy("operator_controls")
def list_requests(conn: Connection, status: RequestStatus | None = None) -> list[CreditRequest]:
    """Requests, newest first; ``status`` keeps only those pending, approved, rejected or
    expired (expired: past its time without a decision)."""
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    with translated(), conn.cursor(row_factory=class_row(CreditRequest)) as cursor:
        found = cursor.execute(_REQUESTS_SQL + " ORDER BY r.id DESC", {"id": None}).fetchall()
    return [r for r in found if status is None or r.status == status]


@on_proxy("operator_controls")
def show_request(conn: Connection, request_id: int) -> CreditRequest:
    params = {"id": valid_request_id(request_id)}
    with translated(), conn.cursor(row_factory=class_row(CreditRequest)) as cursor:
        found = cursor.execute(_REQUESTS_SQL, params).fetchone()
    if found is None:
        raise RequestNotFound(f"request {request_id} not found")
    return found


@on_proxy("request_by_key")
def request_by_key(conn: Connection, idempotency_key: str) -> CreditRequest | None:
    """The request an idempotency key filed, if any."""
    params = {"id": None, "key": validation.idempotency_key(idempotency_key)}
    with translated(), conn.cursor(row_factory=class_row(CreditRequest)) as cursor:
        return cursor.execute(_REQUESTS_SQL + " AND r.idempotency_key = %(key)s", params).fetchone()


@on_proxy("operator_controls")
def approve(conn: Connection, request_id: int, *, reason: str | None = None) -> Receipt:
    """Approve and post a request (walletctl_approver, not its requester). Approving an
    approved request returns its posting's receipt, replayed."""
    params = (valid_request_id(request_id), validation.reason(reason, required=False))
    with translated():
        row = conn.execute("SELECT * FROM walletctl_approve_request(%s, %s)", params).fetchone()
    assert row is not None
    return Receipt(*row)


@on_proxy("operator_controls")
def expire_requests(conn: Connection) -> list[Decision]:
    """Record the expiry of every request past its time without a decision
    (walletctl_approver); returns what it recorded."""
    with translated(), conn.cursor(row_factory=class_row(Decision)) as cursor:
        return cursor.execute(
            "SELECT request_id, decision, decided_by, reason, created_at "
            "FROM walletctl_expire_requests()"
        ).fetchall()


@on_proxy("operator_controls")
def reject(conn: Connection, request_id: int, *, reason: str) -> Decision:
    """Reject a request (walletctl_approver); a reason is required."""
    params = (valid_request_id(request_id), validation.reason(reason, required=True))
    with translated(), conn.cursor(row_factory=class_row(Decision)) as cursor:
        row = cursor.execute(
            "SELECT request_id, decision, decided_by, reason, created_at "
            "FROM walletctl_reject_request(%s, %s)",
            params,
        ).fetchone()
    assert row is not None
    return row
