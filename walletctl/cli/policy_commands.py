"""policy and request command groups, and user freeze/unfreeze: the operator controls
(README "Operator controls"), a thin skin over walletctl/core/policy.py."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer

from walletctl.cli import options, output
from walletctl.cli.admin_commands import user_app
from walletctl.cli.app import app, state
from walletctl.cli.exit_codes import ExitCode
from walletctl.errors import InvalidInput

if TYPE_CHECKING:
    from walletctl.core.policy import CreditRequest, FiledRequest

Column = output.Column

policy_app = typer.Typer(
    help="Approval thresholds and issuance budgets (changing them needs walletctl_admin)."
)
request_app = typer.Typer(
    help="Requests for credits above an asset's approval threshold (four eyes)."
)
app.add_typer(policy_app, name="policy")
app.add_typer(request_app, name="request")


def _require_subcommand(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())
        raise typer.Exit(ExitCode.INVALID_INPUT)


for group in (policy_app, request_app):
    group.callback(invoke_without_command=True)(_require_subcommand)

THRESHOLD_COLUMNS = (
    Column("asset", "Asset"),
    Column("approve_above", "Approve above", numeric=True),
    Column("request_hours", "Request hours", numeric=True),
    Column("set_by", "Set by"),
    Column("set_at", "Set at"),
)
BUDGET_COLUMNS = (
    Column("role", "Role"),
    Column("asset", "Asset"),
    Column("daily_limit", "Daily limit", numeric=True),
    Column("used_today", "Used today (UTC)", numeric=True),
    Column("remaining", "Remaining", numeric=True),
    Column("set_by", "Set by"),
    Column("set_at", "Set at"),
)
REQUEST_COLUMNS = (
    Column("id", "Request", numeric=True),
    Column("status", "Status"),
    Column("kind", "Kind"),
    Column("user_id", "User"),
    Column("asset", "Asset"),
    Column("amount", "Amount", numeric=True),
    Column("requested_by", "Requested by"),
    Column("created_at", "Requested at"),
    Column("expires_at", "Expires at"),
    Column("decided_by", "Decided by"),
    Column("transaction_id", "Transaction", numeric=True),
)
REQUEST_NUMERIC = ("amount", "transaction_id")


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


@policy_app.command(
    "set",
    help="Top-ups and bonuses of ASSET above --approve-above need a second person's "
    "approval ('none': never). A request expires after --request-hours.",
)
def policy_set(
    ctx: typer.Context,
    asset: Annotated[str, typer.Argument(help="Asset code.", show_default=False)],
    approve_above: Annotated[
        str,
        typer.Option("--approve-above", help="A whole number, or 'none'.", show_default=False),
    ],
    request_hours: Annotated[
        int, typer.Option("--request-hours", help="How long a request stays open.")
    ] = 24,
    json_output: options.JsonOption = False,
) -> None:
    from walletctl.core import policy

    threshold = parse_limit(approve_above, "--approve-above")
    out = output.Output(output.choose_mode(json_output=json_output))
    with state(ctx).connection() as conn:
        row = policy.set_approval(conn, asset, threshold, request_hours=request_hours)
    out.record(asdict(row), title=f"Approval policy of {row.asset}", numeric=("approve_above",))


@policy_app.command(
    "budget",
    help="ROLE (a login role, or a group role whose members share it) may credit at most "
    "LIMIT of ASSET per UTC day ('none': no budget).",
)
def policy_budget(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(help="A database role.", show_default=False)],
    asset: Annotated[str, typer.Argument(help="Asset code.", show_default=False)],
    limit: Annotated[str, typer.Argument(help="A whole number, or 'none'.", show_default=False)],
    json_output: options.JsonOption = False,
) -> None:
    from walletctl.core import policy

    daily_limit = parse_limit(limit, "LIMIT")
    out = output.Output(output.choose_mode(json_output=json_output))
    with state(ctx).connection() as conn:
        budget = policy.set_budget(conn, role, asset, daily_limit)
    out.record(
        _budget_row(budget),
        title=f"Budget of {budget.role} for {budget.asset}",
        numeric=("daily_limit", "used_today", "remaining"),
    )


def _budget_row(budget: Any) -> dict[str, Any]:
    return {**asdict(budget), "remaining": budget.remaining}


@policy_app.command("show", help="Approval thresholds, budgets and what each used today.")
def policy_show(ctx: typer.Context, json_output: options.JsonOption = False) -> None:
    from walletctl.core import policy

    out = output.Output(output.choose_mode(json_output=json_output))
    with state(ctx).connection() as conn:
        thresholds = [asdict(p) for p in policy.approval_policies(conn)]
        budgets = [_budget_row(b) for b in policy.budgets(conn)]
    if json_output:
        print(output.dumps({"thresholds": thresholds, "budgets": budgets}))
        return
    out.table(thresholds, THRESHOLD_COLUMNS, title="Approval thresholds")
    out.table(budgets, BUDGET_COLUMNS, title="Issuance budgets")


def request_view(request: CreditRequest) -> dict[str, Any]:
    return asdict(request)


@request_app.command("list", help="Requests, newest first.")
def request_list(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(
            "--status", help="pending, approved, rejected or expired.", show_default=False
        ),
    ] = None,
    json_output: options.JsonOption = False,
    csv_output: options.CsvOption = False,
) -> None:
    from walletctl.core import policy

    out = output.Output(output.choose_mode(json_output=json_output, csv_output=csv_output))
    with state(ctx).connection() as conn:
        found = policy.list_requests(conn, status)  # type: ignore[arg-type]
    out.table([request_view(r) for r in found], REQUEST_COLUMNS, title="Requests", json_lines=True)


@request_app.command("show", help="One request: who asked, who decided, what was posted.")
def request_show(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request.", show_default=False)],
    json_output: options.JsonOption = False,
) -> None:
    from walletctl.core import policy

    wanted = parse_request_id(request_id)
    out = output.Output(output.choose_mode(json_output=json_output))
    with state(ctx).connection() as conn:
        found = policy.show_request(conn, wanted)
    out.record(request_view(found), title=f"Request {wanted}", numeric=REQUEST_NUMERIC)


@request_app.command(
    "approve",
    help="Approve a request and post it with its idempotency key (walletctl_approver; not "
    "the identity that made it). Approving twice posts once.",
)
def request_approve(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request.", show_default=False)],
    reason: options.ReasonOption = None,
    dry_run: options.DryRunOption = False,
    json_output: options.JsonOption = False,
) -> None:
    from walletctl.cli.posting_commands import report_receipt
    from walletctl.core import policy, posting

    wanted = parse_request_id(request_id)
    output.choose_mode(json_output=json_output)
    with state(ctx).connection() as conn, posting.scope(conn, dry_run=dry_run):
        receipt = policy.approve(conn, wanted, reason=reason)
    if not dry_run and not receipt.replayed:
        output.message(f"request {wanted} approved: transaction {receipt.transaction_id}")
    report_receipt(receipt, dry_run=dry_run, generated_key=False, json_output=json_output)


@request_app.command("reject", help="Reject a request (walletctl_approver). --reason is required.")
def request_reject(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request.", show_default=False)],
    reason: options.ReasonOption = None,
    json_output: options.JsonOption = False,
) -> None:
    from walletctl.core import policy

    wanted = parse_request_id(request_id)
    if reason is None:
        raise InvalidInput("--reason is required to reject a request")
    out = output.Output(output.choose_mode(json_output=json_output))
    with state(ctx).connection() as conn:
        decision = policy.reject(conn, wanted, reason=reason)
    out.record(asdict(decision), title=f"Request {wanted} rejected")


DECISION_COLUMNS = (
    Column("request_id", "Request", numeric=True),
    Column("decision", "Decision"),
    Column("decided_by", "Recorded by"),
    Column("reason", "Reason"),
    Column("created_at", "At"),
)


@request_app.command(
    "expire",
    help="Record the expiry of every request past its time without a decision "
    "(walletctl_approver; e.g. from cron).",
)
def request_expire(ctx: typer.Context, json_output: options.JsonOption = False) -> None:
    from walletctl.core import policy

    out = output.Output(output.choose_mode(json_output=json_output))
    with state(ctx).connection() as conn:
        recorded = policy.expire_requests(conn)
    output.message(f"{len(recorded)} request(s) recorded as expired")
    out.table([asdict(d) for d in recorded], DECISION_COLUMNS, title="Expired requests")


def report_filed_request(
    filed: FiledRequest, request: CreditRequest, *, dry_run: bool, json_output: bool
) -> None:
    """What a top-up or bonus above its asset's threshold did: it filed a request."""
    out = output.Output(output.choose_mode(json_output=json_output))
    view = {**request_view(request), "replayed": filed.replayed}
    if dry_run:
        output.message(
            f"dry run: {request.amount:,} {request.asset} is above the approval threshold "
            f"({filed.approve_above:,}): this would create a request awaiting approval; "
            "nothing was written"
        )
        view["id"] = None
        view["dry_run"] = True
    elif filed.replayed:
        output.message(
            f"replayed: key {request.idempotency_key} already filed request {request.id} "
            f"({request.status}); nothing new was written"
        )
    else:
        expires = request.expires_at.isoformat(sep=" ", timespec="seconds")
        output.message(
            f"request {request.id} created, awaiting approval by a walletctl_approver other "
            f"than {request.requested_by} (expires {expires}); nothing was posted yet"
        )
    out.record(view, title="Request (dry run)" if dry_run else "Request", numeric=REQUEST_NUMERIC)


def _freeze_command(frozen: bool) -> None:
    verb = "freeze" if frozen else "unfreeze"

    def command(
        ctx: typer.Context,
        user: Annotated[str, typer.Argument(help="The user's id.", show_default=False)],
        reason: options.ReasonOption = None,
        json_output: options.JsonOption = False,
    ) -> None:
        from walletctl.core import policy

        if reason is None:
            raise InvalidInput(f"--reason is required to {verb} a user")
        out = output.Output(output.choose_mode(json_output=json_output))
        with state(ctx).connection() as conn:
            change = policy.freeze if frozen else policy.unfreeze
            record = change(conn, user, reason)
        output.message(f"{record.user_id} is {'frozen' if frozen else 'no longer frozen'}")
        out.record(asdict(record), title=f"User {record.user_id}")

    command.__name__ = f"user_{verb}"
    user_app.command(
        verb,
        help="Freeze a user: no spends, no credits (a reversal still posts) until unfrozen "
        "(walletctl_admin; --reason required)."
        if frozen
        else "Unfreeze a user (walletctl_admin; --reason required).",
    )(command)


_freeze_command(True)
_freeze_command(False)
