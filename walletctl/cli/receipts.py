"""What a posting that committed shows: its receipt, or the request it filed. Shared by
the posting commands and `request approve`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from walletctl.cli import views
from walletctl.cli.output import Output, Record

if TYPE_CHECKING:
    from walletctl.core.models import Receipt
    from walletctl.core.policy import CreditRequest, FiledRequest


def show_receipt(
    out: Output,
    receipt: Receipt,
    *,
    dry_run: bool,
    generated_key: bool,
    reversed_kind: str | None = None,
) -> None:
    env = out.env
    if dry_run:
        verb = "would replay" if receipt.replayed else "would post"
        env.message(f"dry run: {verb} this {receipt.kind}; nothing was written")
    elif receipt.replayed:
        env.message(
            f"replayed: key {receipt.idempotency_key} already posted transaction "
            f"{receipt.transaction_id}; nothing new was written"
        )
    elif generated_key:
        env.message(
            f"posted with idempotency key {receipt.idempotency_key} "
            f"(to retry safely, pass --key {receipt.idempotency_key})"
        )
    title = f"{receipt.kind} {'(dry run)' if dry_run else ''}".strip()
    view = views.receipt(receipt, reversed_kind=reversed_kind, dry_run=dry_run)
    out.committed(Record(view, title=title, numeric=views.RECEIPT_NUMERIC))


def show_filed_request(
    out: Output, filed: FiledRequest, found: CreditRequest, *, dry_run: bool
) -> None:
    """What a top-up or bonus above its asset's threshold did: it filed a request."""
    env = out.env
    if dry_run and filed.replayed:
        env.message(
            f"dry run: key {found.idempotency_key} already filed request {found.id} "
            f"({found.status}); sending it again would file nothing new; nothing was written"
        )
    elif dry_run:
        env.message(
            f"dry run: {found.amount:,} {found.asset} is above the approval threshold "
            f"({filed.approve_above:,}): this would create a request awaiting approval; "
            "nothing was written"
        )
    elif filed.replayed:
        env.message(
            f"replayed: key {found.idempotency_key} already filed request {found.id} "
            f"({found.status}); nothing new was written"
        )
    else:
        expires = found.expires_at.isoformat(sep=" ", timespec="seconds")
        env.message(
            f"request {found.id} created, awaiting approval by a walletctl_approver other "
            f"than {found.requested_by} (expires {expires}); nothing was posted yet"
        )
    out.committed(
        Record(
            views.filed_request(filed, found, dry_run=dry_run),
            title="Request (dry run)" if dry_run else "Request",
            numeric=views.REQUEST_NUMERIC,
        )
    )
