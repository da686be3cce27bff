"""topup, bonus, spend, reverse: the commands that write to the ledger."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any

import typer

from walletctl.cli import options
from walletctl.cli.app import state
from walletctl.cli.exit_codes import ExitCode
from walletctl.cli.formats import prints
from walletctl.cli.groups import POSTING, command
from walletctl.cli.output import Output
from walletctl.cli.receipts import show_filed_request, show_receipt
from walletctl.errors import ApprovalRequired, InvalidInput

if TYPE_CHECKING:
    from walletctl.cli.app import State
    from walletctl.core.models import PostingKind, Receipt

UserArgument = Annotated[
    str | None,
    typer.Argument(help="The user's id, as the rest of the company knows it.", show_default=False),
]
AmountArgument = Annotated[
    str | None,
    typer.Argument(
        help="A positive whole number in the asset's smallest unit.", show_default=False
    ),
]

POSTING_EXITS = (
    ExitCode.INSUFFICIENT_FUNDS,
    ExitCode.NOT_FOUND,
    ExitCode.CONFLICT,
    ExitCode.REFUSED,
    ExitCode.PARTIAL,
    ExitCode.REPORT_NOT_WRITTEN,
)


def _new_key() -> str:
    return f"cli-{uuid.uuid4()}"


def _post(
    current: State,
    out: Output,
    kind: PostingKind,
    user: str,
    amount_text: str,
    *,
    asset: str,
    key: str | None,
    reason: str | None,
    actor: str | None,
    yes: bool,
    dry_run: bool,
) -> None:
    from walletctl.core import posting, validation

    amount = validation.parse_amount(amount_text)
    request = {
        "user_id": validation.user_id(user),
        "amount": amount,
        "asset": validation.asset_code(asset),
        "idempotency_key": validation.idempotency_key(key) if key is not None else _new_key(),
        "reason": validation.reason(reason, required=kind == "bonus"),
        "on_behalf_of": validation.on_behalf_of(options.on_behalf_of(actor)),
    }
    current.confirmation().check(
        amount, what=f"{kind} of {asset} to {user}", confirmed=yes or dry_run, ask=current.asker()
    )
    with current.connection() as conn, posting.scope(conn, dry_run=dry_run):
        try:
            receipt = posting.post(conn, kind, **request)  # type: ignore[arg-type]
        except ApprovalRequired:
            if kind == "spend":
                raise
            # Above the asset's approval threshold: the database refused to post it; file
            # it as a request for a second person (README "Four-eyes approval").
            _file_request(conn, out, kind, request, dry_run=dry_run)
            return
        if dry_run:
            _report_budgets(conn, out, receipt)
    show_receipt(out, receipt, dry_run=dry_run, generated_key=key is None)


def _file_request(
    conn: Any, out: Output, kind: PostingKind, request: dict[str, Any], *, dry_run: bool
) -> None:
    from walletctl.core import policy

    filed = policy.request_credit(conn, kind, **request)
    show_filed_request(out, filed, policy.show_request(conn, filed.request_id), dry_run=dry_run)


def _report_budgets(conn: Any, out: Output, receipt: Receipt) -> None:
    """A dry run shows what the posting would leave of each budget that binds the caller."""
    from walletctl.core import policy

    if receipt.kind == "spend" or receipt.replayed:
        return
    for budget in policy.binding_budgets(conn, receipt.asset):
        out.env.message(
            f"dry run: budget of {budget.role}: {budget.used_today:,} of "
            f"{budget.daily_limit:,} {budget.asset} used today (UTC) with this posting, "
            f"{budget.remaining:,} would remain"
        )


def _register_posting_command(kind: PostingKind, help_text: str) -> None:
    """topup, bonus and spend share one signature: one row from the arguments, or a file."""

    @prints()
    def posting_command(
        ctx: typer.Context,
        out: Output,
        user: UserArgument = None,
        amount: AmountArgument = None,
        asset: options.AssetOption = options.DEFAULT_ASSET,
        key: options.KeyOption = None,
        reason: options.ReasonOption = None,
        actor: options.ActorOption = None,
        yes: options.YesOption = False,
        dry_run: options.DryRunOption = False,
        file: options.FileOption = None,
        file_format: options.FileFormatOption = None,
        key_prefix: options.KeyPrefixOption = None,
        validate_only: options.ValidateOnlyOption = False,
        skip_invalid: options.SkipInvalidOption = False,
        atomic: options.AtomicOption = False,
        report: options.ReportOption = None,
        max_total: options.MaxTotalOption = None,
        batch_size: options.BatchSizeOption = 5000,
        jobs: options.JobsOption = 2,
        allow_unterminated: options.AllowUnterminatedOption = False,
    ) -> None:
        current = state(ctx)
        if file is None:
            bulk_only = [
                name
                for name, value in (
                    ("--file-format", file_format),
                    ("--key-prefix", key_prefix),
                    ("--validate-only", validate_only),
                    ("--atomic", atomic),
                    ("--skip-invalid", skip_invalid),
                    ("--report", report),
                    ("--max-total", max_total),
                    ("--allow-unterminated", allow_unterminated),
                )
                if value
            ]
            if bulk_only:
                raise InvalidInput(f"{', '.join(bulk_only)} only go with --file")
            if user is None or amount is None:
                raise InvalidInput("give USER and AMOUNT, or --file")
            _post(
                current,
                out,
                kind,
                user,
                amount,
                asset=asset,
                key=key,
                reason=reason,
                actor=actor,
                yes=yes,
                dry_run=dry_run,
            )
            return
        if user is not None or amount is not None or key is not None:
            raise InvalidInput(
                "--file takes its users, amounts and keys from the file "
                "(give no USER, AMOUNT or --key)"
            )
        from walletctl.cli.bulk_run import FileRequest, run_file

        run_file(
            current,
            out,
            kind,
            FileRequest(
                path=file,
                fmt=file_format,
                asset=asset,
                key_prefix=key_prefix,
                reason=reason,
                actor=actor,
                validate_only=validate_only,
                skip_invalid=skip_invalid,
                atomic=atomic,
                report=report,
                max_total=max_total,
                batch_size=batch_size,
                jobs=jobs,
                yes=yes,
                dry_run=dry_run,
                allow_unterminated=allow_unterminated,
            ),
        )

    posting_command.__name__ = kind
    command(kind, help_text, exits=POSTING_EXITS, panel=POSTING)(posting_command)


_register_posting_command(
    "topup",
    "Credit credits a user bought (a purchase). Creates the user on first credit. "
    "With --file, a file of them.",
)
_register_posting_command(
    "bonus",
    "Credit credits granted for free (referral, promotion). --reason is required "
    "(per row, or as the default for a --file).",
)
_register_posting_command(
    "spend",
    "Debit credits a user spends. Refused (exit 3) if the balance is short. With "
    "--file, each row that would go below zero is refused alone.",
)


@command(
    "reverse",
    "Post the mirror image of a topup, bonus or spend. --reason is required.",
    exits=(ExitCode.INSUFFICIENT_FUNDS, ExitCode.NOT_FOUND, ExitCode.CONFLICT, ExitCode.REFUSED),
    panel=POSTING,
)
@prints()
def reverse(
    ctx: typer.Context,
    out: Output,
    transaction_id: Annotated[
        str, typer.Argument(help="The transaction to reverse.", show_default=False)
    ],
    reason: options.ReasonOption = None,
    key: options.KeyOption = None,
    actor: options.ActorOption = None,
    yes: options.YesOption = False,
    dry_run: options.DryRunOption = False,
) -> None:
    from walletctl.core import history, posting, validation

    current = state(ctx)
    target_id = options.parse_transaction_id(transaction_id)
    request = {
        "idempotency_key": validation.idempotency_key(key) if key is not None else _new_key(),
        "reason": validation.reason(reason, required=True),
        "on_behalf_of": validation.on_behalf_of(options.on_behalf_of(actor)),
    }
    with current.connection() as conn:
        target = history.transaction(conn, target_id)
        current.confirmation().check(
            target.amount,
            what=f"reversal of {target.kind} {target_id} ({target.asset}, {target.user_id})",
            confirmed=yes or dry_run,
            ask=current.asker(),
        )
        with posting.scope(conn, dry_run=dry_run):
            receipt = posting.reverse(conn, target_id, **request)  # type: ignore[arg-type]
    show_receipt(
        out, receipt, dry_run=dry_run, generated_key=key is None, reversed_kind=target.kind
    )
