"""One serializer per core type: what each thing is called in every output.

Every format (table, tsv, csv, json, jsonl; walletctl.cli.output) prints these dicts, so a
concept has one name everywhere: ``user`` (the user's id), ``idempotency_key``,
``transaction_id``, ``request_id``, ``created_at``; ``amount`` is always signed, what the
posting did to the user's balance (a spend of 120 is -120 in a receipt, a statement, a
transaction, a bulk report); balances are always a list of ``{user, asset, balance,
updated_at}``; times are datetimes, written ISO 8601 in UTC by the output layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from walletctl.cli.output import Column
from walletctl.core.values import balance_change

if TYPE_CHECKING:
    from walletctl.cluster.admin import PartitionStatus
    from walletctl.cluster.topology import Partition
    from walletctl.core.bulk import InvalidRow, RowOutcome
    from walletctl.core.checkpoints import Checkpoint
    from walletctl.core.models import (
        Asset,
        Balance,
        Entry,
        Outstanding,
        Receipt,
        StatementLine,
        StatementTotal,
        TransactionDetail,
        UserSummary,
    )
    from walletctl.core.policy import (
        ApprovalPolicy,
        Budget,
        CreditRequest,
        Decision,
        FiledRequest,
        Freeze,
    )
    from walletctl.core.reconcile import ReconcileReport
    from walletctl.core.summary import ActorTotal, PeriodSummary
    from walletctl.roles import Membership

View = dict[str, Any]

# Postings.

RECEIPT_NUMERIC = ("amount", "balance_after")


def receipt(found: Receipt, *, reversed_kind: str | None = None, dry_run: bool = False) -> View:
    """A posting's receipt. ``reversed_kind``: for a reversal, the kind it reverses (its
    sign is the opposite of that one's)."""
    view: View = {
        "transaction_id": None if dry_run else found.transaction_id,
        "kind": found.kind,
        "user": found.user_id,
        "asset": found.asset,
        "amount": balance_change(found.kind, found.amount, reversed_kind),
        "balance_after": found.balance_after,
        "created_at": found.created_at,
        "idempotency_key": found.idempotency_key,
        "actor": found.actor,
        "on_behalf_of": found.on_behalf_of,
        "reverses": found.reverses,
        "replayed": found.replayed,
    }
    if dry_run:
        view["dry_run"] = True
    return view


# Balances.

BALANCE_COLUMNS = (
    Column("user", "User"),
    Column("asset", "Asset"),
    Column("balance", "Balance", numeric=True),
    Column("updated_at", "Last change"),
)


def balance(held: Balance) -> View:
    return {
        "user": held.user_id,
        "asset": held.asset,
        "balance": held.balance,
        "updated_at": held.updated_at,
    }


TREASURY_COLUMNS = (
    Column("asset", "Asset"),
    Column("outstanding", "Outstanding", numeric=True),
    Column("holders", "Holders", numeric=True),
    Column("treasury_balance", "Treasury balance", numeric=True),
)


def outstanding(row: Outstanding) -> View:
    return {
        "asset": row.asset,
        "outstanding": row.outstanding,
        "holders": row.holders,
        "treasury_balance": row.treasury_balance,
    }


# Users: the same balances list as `balance`; flat formats get a column per asset.

USER_COLUMNS = (
    Column("user", "User"),
    Column("created_at", "Created", optional=True),
    Column("entries", "Entries", numeric=True),
    Column("frozen", "Frozen"),
)


def user(summary: UserSummary) -> View:
    return {
        "user": summary.user_id,
        "created_at": summary.created_at,
        "entries": summary.transactions,
        "frozen": summary.frozen,
        "balances": [balance(held) for held in summary.balances],
    }


def user_row(summary: UserSummary) -> View:
    """A user as one flat row: a column per asset (named by its code) with the balance."""
    row = {key: value for key, value in user(summary).items() if key != "balances"}
    row.update({held.asset: held.balance for held in summary.balances})
    return row


def asset_columns(codes: list[str]) -> tuple[Column, ...]:
    return tuple(Column(code, code, numeric=True) for code in codes)


def balances_row(summary: UserSummary) -> View:
    """``balance --all``: a user and a column per asset."""
    return {"user": summary.user_id, **{held.asset: held.balance for held in summary.balances}}


# Statements and transactions.

STATEMENT_COLUMNS = (
    Column("created_at", "Time (UTC)"),
    Column("transaction_id", "Txn", numeric=True),
    Column("kind", "Kind"),
    Column("asset", "Asset"),
    Column("amount", "Amount", numeric=True),
    Column("balance_after", "Balance", numeric=True),
    Column("reason", "Reason"),
    Column("actor", "Actor", optional=True),
    Column("on_behalf_of", "On behalf of", optional=True),
    Column("idempotency_key", "Key", optional=True),
    Column("reverses", "Reverses", numeric=True, optional=True),
)


def statement_line(line: StatementLine) -> View:
    return {
        "created_at": line.created_at,
        "transaction_id": line.transaction_id,
        "kind": line.kind,
        "asset": line.asset,
        "amount": line.amount,
        "balance_after": line.balance_after,
        "reason": line.reason,
        "actor": line.actor,
        "on_behalf_of": line.on_behalf_of,
        "idempotency_key": line.idempotency_key,
        "reverses": line.reverses,
    }


STATEMENT_TOTAL_COLUMNS = (
    Column("asset", "Asset"),
    Column("entries", "Entries", numeric=True),
    Column("amount", "Net amount", numeric=True),
)


def statement_total(total: StatementTotal) -> View:
    return {"asset": total.asset, "entries": total.entries, "amount": total.amount}


TRANSACTION_NUMERIC = ("amount", "transaction_id", "reverses", "reversed_by", "entries_sum")
ENTRY_COLUMNS = (
    Column("entry_id", "Entry", numeric=True),
    Column("account", "Account"),
    Column("amount", "Amount", numeric=True),
    Column("balance_after", "Balance after", numeric=True),
)


def transaction(detail: TransactionDetail, request: CreditRequest | None = None) -> View:
    view: View = {
        "transaction_id": detail.transaction_id,
        "kind": detail.kind,
        "user": detail.user_id,
        "asset": detail.asset,
        "amount": detail.user_amount,
        "created_at": detail.created_at,
        "idempotency_key": detail.idempotency_key,
        "reason": detail.reason,
        "actor": detail.actor,
        "on_behalf_of": detail.on_behalf_of,
        "reverses": detail.reverses,
        "reversed_by": detail.reversed_by,
        "entries_sum": detail.entries_sum,
    }
    if request is not None:  # posted by approving a request: who asked, who approved
        view["request_id"] = request.id
        view["requested_by"] = request.requested_by
        view["approved_by"] = request.decided_by
    return view


def entry(found: Entry) -> View:
    """One entry of a transaction, as in the csv and jsonl exports (in a flat row of
    ``audit --txn``, ``amount`` is the entry's: the user's row shows the user's side)."""
    return {
        "entry_id": found.entry_id,
        "account": found.account,
        "amount": found.amount,
        "balance_after": found.balance_after,
    }


# Assets.

ASSET_COLUMNS = (Column("code", "Code"), Column("name", "Name"), Column("created_at", "Created"))


def asset(found: Asset) -> View:
    return {"code": found.code, "name": found.name, "created_at": found.created_at}


# Finance.

SUMMARY_COLUMNS = (
    Column("asset", "Asset"),
    Column("issued_topup", "Issued: top-ups", numeric=True),
    Column("issued_bonus", "Issued: bonuses", numeric=True),
    Column("spent", "Spent", numeric=True),
    Column("reversed", "Reversed (net)", numeric=True),
    Column("reversed_topup", "Reversed top-ups", numeric=True, optional=True),
    Column("reversed_bonus", "Reversed bonuses", numeric=True, optional=True),
    Column("reversed_spend", "Reversed spends", numeric=True, optional=True),
    Column("net_change", "Net change", numeric=True),
    Column("outstanding_start", "Outstanding at start", numeric=True),
    Column("outstanding_end", "Outstanding at end", numeric=True),
    Column("transactions", "Transactions", numeric=True),
)


def period_summary(row: PeriodSummary) -> View:
    return {column.key: getattr(row, column.key) for column in SUMMARY_COLUMNS}


BY_ACTOR_COLUMNS = (
    Column("actor", "Actor"),
    Column("asset", "Asset"),
    Column("kind", "Kind"),
    Column("transactions", "Transactions", numeric=True),
    Column("amount", "Amount", numeric=True),
)


def actor_total(row: ActorTotal) -> View:
    return {
        "actor": row.actor,
        "asset": row.asset,
        "kind": row.kind,
        "transactions": row.transactions,
        "amount": row.amount,
    }


CHECK_COLUMNS = (
    Column("check", "Check"),
    Column("status", "Status"),
    Column("checked", "Checked", numeric=True),
    Column("failures", "Failures", numeric=True),
    Column("examples", "Examples"),
)
CHECK_STYLES = {"PASS": "green", "FAIL": "bold red"}


def reconcile(report: ReconcileReport) -> View:
    return {
        "passed": report.passed,
        "mode": report.mode,
        "sealed_horizon": report.horizon,
        "notes": list(report.notes),
    }


def checks(report: ReconcileReport) -> list[View]:
    return [
        {
            "check": check.name,
            "status": "PASS" if check.passed else "FAIL",
            "checked": check.checked,
            "failures": check.failures,
            "examples": "; ".join(check.examples),
        }
        for check in report.checks
    ]


CHECKPOINT_NUMERIC = ("transactions", "entries")


def checkpoint(found: Checkpoint) -> View:
    return {
        "checkpoint": found.id,
        "previous_checkpoint": found.previous_id,
        "sealed_after": found.previous_horizon,
        "sealed_through": found.horizon,
        "transactions": found.transactions,
        "entries": found.entries,
        "hash": found.hash.hex(),
        "created_at": found.created_at,
    }


# Bulk files.

BULK_REPORT_FIELDS = (
    "line",
    "outcome",
    "user",
    "amount",
    "asset",
    "idempotency_key",
    "transaction_id",
    "balance_after",
    "detail",
)
BULK_SUMMARY_COLUMNS = (
    Column("outcome", "Outcome"),
    Column("rows", "Rows", numeric=True),
    Column("amount", "Amount", numeric=True),
)


def bulk_outcome(kind: str, outcome: RowOutcome) -> View:
    return {
        "line": outcome.line,
        "outcome": outcome.outcome,
        "user": outcome.user_id,
        "amount": None if outcome.amount is None else balance_change(kind, outcome.amount),
        "asset": outcome.asset,
        "idempotency_key": outcome.idempotency_key,
        "transaction_id": outcome.transaction_id,
        "balance_after": outcome.balance_after,
        "detail": outcome.detail,
    }


def bulk_invalid(bad: InvalidRow) -> View:
    """A row that was not valid: its fields as found in the file, and why."""
    return {
        "line": bad.line,
        "outcome": "invalid",
        "user": bad.fields.get("user"),
        "amount": bad.fields.get("amount"),
        "asset": bad.fields.get("asset"),
        "idempotency_key": bad.fields.get("key"),
        "transaction_id": None,
        "balance_after": None,
        "detail": bad.error,
    }


# Operator controls.

REQUEST_COLUMNS = (
    Column("request_id", "Request", numeric=True),
    Column("status", "Status"),
    Column("kind", "Kind"),
    Column("user", "User"),
    Column("asset", "Asset"),
    Column("amount", "Amount", numeric=True),
    Column("requested_by", "Requested by"),
    Column("created_at", "Requested at", optional=True),
    Column("expires_at", "Expires at", optional=True),
    Column("decided_by", "Decided by", optional=True),
    Column("transaction_id", "Transaction", numeric=True, optional=True),
)
REQUEST_NUMERIC = ("amount", "transaction_id", "request_id")


def request(found: CreditRequest) -> View:
    return {
        "request_id": found.id,
        "status": found.status,
        "kind": found.kind,
        "user": found.user_id,
        "asset": found.asset,
        "amount": found.amount,
        "idempotency_key": found.idempotency_key,
        "reason": found.reason,
        "on_behalf_of": found.on_behalf_of,
        "requested_by": found.requested_by,
        "created_at": found.created_at,
        "expires_at": found.expires_at,
        "decided_by": found.decided_by,
        "decided_at": found.decided_at,
        "decision_reason": found.decision_reason,
        "transaction_id": found.transaction_id,
    }


def filed_request(filed: FiledRequest, found: CreditRequest, *, dry_run: bool) -> View:
    view = {**request(found), "replayed": filed.replayed}
    if dry_run:
        if not filed.replayed:  # the request the dry run would file has no id
            view["request_id"] = None
        view["dry_run"] = True
    return view


DECISION_COLUMNS = (
    Column("request_id", "Request", numeric=True),
    Column("decision", "Decision"),
    Column("decided_by", "Recorded by"),
    Column("reason", "Reason"),
    Column("created_at", "At"),
)


def decision(found: Decision) -> View:
    return {
        "request_id": found.request_id,
        "decision": found.decision,
        "decided_by": found.decided_by,
        "reason": found.reason,
        "created_at": found.created_at,
    }


THRESHOLD_COLUMNS = (
    Column("asset", "Asset"),
    Column("approve_above", "Approve above", numeric=True),
    Column("request_hours", "Request hours", numeric=True),
    Column("set_by", "Set by"),
    Column("set_at", "Set at", optional=True),
)


def approval_policy(found: ApprovalPolicy) -> View:
    return {
        "asset": found.asset,
        "approve_above": found.approve_above,
        "request_hours": found.request_hours,
        "set_by": found.set_by,
        "set_at": found.set_at,
    }


BUDGET_COLUMNS = (
    Column("role", "Role"),
    Column("asset", "Asset"),
    Column("daily_limit", "Daily limit", numeric=True),
    Column("used_today", "Used today (UTC)", numeric=True),
    Column("remaining", "Remaining", numeric=True),
    Column("set_by", "Set by", optional=True),
    Column("set_at", "Set at", optional=True),
)


def budget(found: Budget) -> View:
    return {
        "role": found.role,
        "asset": found.asset,
        "daily_limit": found.daily_limit,
        "used_today": found.used_today,
        "remaining": found.remaining,
        "set_by": found.set_by,
        "set_at": found.set_at,
    }


def freeze(found: Freeze) -> View:
    return {
        "user": found.user_id,
        "frozen": found.frozen,
        "reason": found.reason,
        "actor": found.actor,
        "created_at": found.created_at,
    }


# The database.

MEMBERSHIP_COLUMNS = (
    Column("login_role", "Role"),
    Column("kind", "walletctl role"),
    Column("can_login", "Can log in"),
    Column("superuser", "Superuser"),
)


def membership(found: Membership) -> View:
    return {
        "login_role": found.login_role,
        "kind": found.kind,
        "can_login": found.can_login,
        "superuser": found.superuser,
    }


# A cluster (PL/Proxy).

PARTITION_COLUMNS = (
    Column("partition", "Partition", numeric=True),
    Column("connstr", "Where"),
    Column("reachable", "Reachable"),
    Column("schema_revision", "Schema"),
    Column("size_bytes", "Size (bytes)", numeric=True),
    Column("users", "Users", numeric=True),
    Column("transactions", "Transactions", numeric=True),
    Column("problem", "Problem"),
)


def partition(found: Partition) -> View:
    return {"partition": found.number, "connstr": found.connstr}


def partition_status(status: PartitionStatus) -> View:
    return {
        "partition": status.number,
        "connstr": status.connstr,
        "reachable": status.reachable,
        "schema_revision": status.schema_revision,
        "size_bytes": status.size_bytes,
        "users": status.users,
        "transactions": status.transactions,
        "problem": status.problem,
    }


PARTITION_SEAL_COLUMNS = (
    Column("partition", "Partition"),
    Column("checkpoint", "Checkpoint", numeric=True),
    Column("sealed_after", "Sealed after", numeric=True),
    Column("sealed_through", "Sealed through", numeric=True),
    Column("transactions", "Transactions", numeric=True),
    Column("hash", "Hash"),
)


def partition_seal(found: Partition, sealed: Checkpoint | None) -> View:
    """`seal` through a proxy: one partition's new checkpoint (or none)."""
    return {
        "partition": found.label,
        "checkpoint": sealed.id if sealed else None,
        "sealed_after": sealed.previous_horizon if sealed else None,
        "sealed_through": sealed.horizon if sealed else None,
        "transactions": sealed.transactions if sealed else 0,
        "hash": sealed.hash.hex() if sealed else None,
    }
