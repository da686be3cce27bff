"""policy and request command groups, and user freeze/unfreeze: the operator controls
(README "Operator controls"), a thin skin over walletctl/core/policy.py."""

from __future__ import annotations

from typing import Annotated

import typer

from walletctl.cli import options, views
from walletctl.cli.app import state
from walletctl.cli.exit_codes import ExitCode
from walletctl.cli.formats import prints
from walletctl.cli.groups import command, policy_app, request_app, user_app
from walletctl.cli.output import Listing, Output, Record
from walletctl.cli.receipts import show_receipt
from walletctl.errors import InvalidInput


def parse_limit(text: str, what: str) -> int | None:
    """A whole number (``1_000`` and ``1,000`` too), or ``none`` to remove the limit."""
    from walletctl.core import validation

    if text.strip().lower() == "none":
        return None
    if text.strip() == "0":
        return 0
    try:
        return validation.parse_amount(text)
    except InvalidInput:
        raise InvalidInput(
            f"{what} must be a whole number of at least 0, or 'none', got {text[:60]!r}"
        ) from None


def parse_request_id(text: str) -> int:
    from walletctl.core import policy

    cleaned = text.strip()
    if not cleaned.isascii() or not cleaned.isdigit():
        raise InvalidInput(f"request id must be a positive whole number, got {text[:60]!r}")
    return policy.valid_request_id(int(cleaned))


@command(
    "set",
    "Top-ups and bonuses of ASSET above --approve-above need a second person's "
    "approval ('none': never). A request expires after --request-hours.",
    exits=(ExitCode.NOT_FOUND,),
    on=policy_app,
)
@prints()
def policy_set(
    ctx: typer.Context,
    out: Output,
    asset: Annotated[str, typer.Argument(help="Asset code.", show_default=False)],
    approve_above: Annotated[
        str,
        typer.Option("--approve-above", help="A whole number, or 'none'.", show_default=False),
    ],
    request_hours: Annotated[
        int, typer.Option("--request-hours", help="How long a request stays open.")
    ] = 24,
) -> None:
    from walletctl.core import policy

    threshold = parse_limit(approve_above, "--approve-above")
    with state(ctx).connection() as conn:
        row = policy.set_approval(conn, asset, threshold, request_hours=request_hours)
    out.committed(
        Record(
            views.approval_policy(row),
            title=f"Approval policy of {row.asset}",
            numeric=("approve_above",),
        )
    )


@command(
    "budget",
    "ROLE (a login role, or a group role whose members share it) may credit at most "
    "LIMIT of ASSET per UTC day ('none': no budget).",
    exits=(ExitCode.NOT_FOUND,),
    on=policy_app,
)
@prints()
def policy_budget(
    ctx: typer.Context,
    out: Output,
    role: Annotated[str, typer.Argument(help="A database role.", show_default=False)],
    asset: Annotated[str, typer.Argument(help="Asset code.", show_default=False)],
    limit: Annotated[str, typer.Argument(help="A whole number, or 'none'.", show_default=False)],
) -> None:
    from walletctl.core import policy

    daily_limit = parse_limit(limit, "LIMIT")
    with state(ctx).connection() as conn:
        budget = policy.set_budget(conn, role, asset, daily_limit)
    out.committed(
        Record(
            views.budget(budget),
            title=f"Budget of {budget.role} for {budget.asset}",
            numeric=("daily_limit", "used_today", "remaining"),
        )
    )


@command("show", "Approval thresholds, budgets and what each used today.", on=policy_app)
@prints()
def policy_show(ctx: typer.Context, out: Output) -> None:
    from walletctl.core import policy

    with state(ctx).connection() as conn:
        thresholds = [views.approval_policy(p) for p in policy.approval_policies(conn)]
        budgets = [views.budget(b) for b in policy.budgets(conn)]
    out.sections(
        [
            Listing(
                thresholds, views.THRESHOLD_COLUMNS, title="Approval thresholds", name="thresholds"
            ),
            Listing(budgets, views.BUDGET_COLUMNS, title="Issuance budgets", name="budgets"),
        ]
    )


@command("list", "Requests, newest first.", on=request_app)
@prints(output_file=True, pager=True)
def request_list(
    ctx: typer.Context,
    out: Output,
    status: Annotated[
        str | None,
        typer.Option(
            "--status", help="pending, approved, rejected or expired.", show_default=False
        ),
    ] = None,
) -> None:
    from walletctl.core import policy

    with state(ctx).connection() as conn:
        found = policy.list_requests(conn, status)  # type: ignore[arg-type]
    out.listing(
        Listing(
            [views.request(r) for r in found],
            views.REQUEST_COLUMNS,
            title="Requests",
            name="requests",
            streams=True,
        )
    )


@command(
    "show",
    "One request: who asked, who decided, what was posted.",
    exits=(ExitCode.NOT_FOUND,),
    on=request_app,
)
@prints()
def request_show(
    ctx: typer.Context,
    out: Output,
    request_id: Annotated[str, typer.Argument(help="The request.", show_default=False)],
) -> None:
    from walletctl.core import policy

    wanted = parse_request_id(request_id)
    with state(ctx).connection() as conn:
        found = policy.show_request(conn, wanted)
    out.record(
        Record(views.request(found), title=f"Request {wanted}", numeric=views.REQUEST_NUMERIC)
    )


@command(
    "approve",
    "Approve a request and post it with its idempotency key (walletctl_approver; not "
    "the identity that made it). Approving twice posts once.",
    exits=(ExitCode.NOT_FOUND, ExitCode.CONFLICT, ExitCode.REFUSED, ExitCode.INSUFFICIENT_FUNDS),
    on=request_app,
)
@prints()
def request_approve(
    ctx: typer.Context,
    out: Output,
    request_id: Annotated[str, typer.Argument(help="The request.", show_default=False)],
    reason: options.ReasonOption = None,
    dry_run: options.DryRunOption = False,
) -> None:
    from walletctl.core import policy, posting

    wanted = parse_request_id(request_id)
    with state(ctx).connection() as conn, posting.scope(conn, dry_run=dry_run):
        receipt = policy.approve(conn, wanted, reason=reason)
    if not dry_run and not receipt.replayed:
        out.env.message(f"request {wanted} approved: transaction {receipt.transaction_id}")
    show_receipt(out, receipt, dry_run=dry_run, generated_key=False)


@command(
    "reject",
    "Reject a request (walletctl_approver). --reason is required.",
    exits=(ExitCode.NOT_FOUND, ExitCode.CONFLICT, ExitCode.REFUSED),
    on=request_app,
)
@prints()
def request_reject(
    ctx: typer.Context,
    out: Output,
    request_id: Annotated[str, typer.Argument(help="The request.", show_default=False)],
    reason: options.ReasonOption = None,
) -> None:
    from walletctl.core import policy

    wanted = parse_request_id(request_id)
    if reason is None:
        raise InvalidInput("--reason is required to reject a request")
    with state(ctx).connection() as conn:
        decision = policy.reject(conn, wanted, reason=reason)
    out.committed(Record(views.decision(decision), title=f"Request {wanted} rejected"))


@command(
    "expire",
    "Record the expiry of every request past its time without a decision "
    "(walletctl_approver; e.g. from cron).",
    on=request_app,
)
@prints()
def request_expire(ctx: typer.Context, out: Output) -> None:
    from walletctl.core import policy

    with state(ctx).connection() as conn:
        recorded = policy.expire_requests(conn)
    out.env.message(f"{len(recorded)} request(s) recorded as expired")
    out.listing(
        Listing(
            [views.decision(d) for d in recorded],
            views.DECISION_COLUMNS,
            title="Expired requests",
            name="decisions",
        )
    )


def _freeze_command(frozen: bool) -> None:
    verb = "freeze" if frozen else "unfreeze"

    @prints()
    def change(
        ctx: typer.Context,
        out: Output,
        user: Annotated[str, typer.Argument(help="The user's id.", show_default=False)],
        reason: options.ReasonOption = None,
    ) -> None:
        from walletctl.core import policy

        if reason is None:
            raise InvalidInput(f"--reason is required to {verb} a user")
        with state(ctx).connection() as conn:
            record = (policy.freeze if frozen else policy.unfreeze)(conn, user, reason)
        out.env.message(f"{record.user_id} is {'frozen' if frozen else 'no longer frozen'}")
        out.committed(Record(views.freeze(record), title=f"User {record.user_id}"))

    change.__name__ = f"user_{verb}"
    command(
        verb,
        "Freeze a user: no spends, no credits (a reversal still posts) until unfrozen "
        "(walletctl_admin; --reason required)."
        if frozen
        else "Unfreeze a user (walletctl_admin; --reason required).",
        exits=(ExitCode.NOT_FOUND,),
        on=user_app,
    )(change)


_freeze_command(True)
_freeze_command(False)
