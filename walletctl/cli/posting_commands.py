"""topup, bonus, spend, reverse: the commands that write to the ledger."""

from __future__ import annotations

import sys
import uuid
from typing import TYPE_CHECKING, Annotated, Any

import typer

from walletctl.cli import options, output
from walletctl.cli.app import app, state
from walletctl.errors import ApprovalRequired, InvalidInput, Refused

if TYPE_CHECKING:
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

RECEIPT_NUMERIC = ("amount", "balance_after")


def _new_key() -> str:
    return f"cli-{uuid.uuid4()}"


def confirm_large_amount(
    amount: int, threshold: int, *, yes: bool, refusal: str, question: str, can_ask: bool = True
) -> None:
    """Amounts above the threshold need a yes: asked on a terminal, --yes otherwise."""
    if yes or amount <= threshold:
        return
    if not can_ask or not sys.stdin.isatty():
        raise Refused(
            f"{refusal} is above the confirmation threshold ({threshold:,}); pass --yes to confirm"
        )
    if not typer.confirm(question, err=True):
        raise typer.Abort()


def _confirm(threshold: int, amount: int, what: str, *, yes: bool) -> None:
    confirm_large_amount(
        amount,
        threshold,
        yes=yes,
        refusal=f"{what}: {amount:,}",
        question=f"{what}: {amount:,} is above {threshold:,}. Post it?",
    )


def _receipt_view(receipt: Receipt, *, dry_run: bool) -> dict[str, Any]:
    view: dict[str, Any] = {
        "transaction_id": receipt.transaction_id,
        "kind": receipt.kind,
        "user": receipt.user_id,
        "asset": receipt.asset,
        "amount": receipt.amount,
        "balance_after": receipt.balance_after,
        "created_at": receipt.created_at,
        "idempotency_key": receipt.idempotency_key,
        "actor": receipt.actor,
        "on_behalf_of": receipt.on_behalf_of,
        "replayed": receipt.replayed,
    }
    if receipt.reverses is not None:
        view["reverses"] = receipt.reverses
    if dry_run:
        view["dry_run"] = True
        view["transaction_id"] = None
    return view


def report_receipt(
    receipt: Receipt, *, dry_run: bool, generated_key: bool, json_output: bool
) -> None:
    out = output.Output(output.choose_mode(json_output=json_output))
    if dry_run:
        verb = "would replay" if receipt.replayed else "would post"
        output.message(f"dry run: {verb} this {receipt.kind}; nothing was written")
    elif receipt.replayed:
        output.message(
            f"replayed: key {receipt.idempotency_key} already posted transaction "
            f"{receipt.transaction_id}; nothing new was written"
        )
    elif generated_key:
        output.message(
            f"posted with idempotency key {receipt.idempotency_key} "
            f"(to retry safely, pass --key {receipt.idempotency_key})"
        )
    title = f"{receipt.kind} {'(dry run)' if dry_run else ''}".strip()
    out.record(_receipt_view(receipt, dry_run=dry_run), title=title, numeric=RECEIPT_NUMERIC)


def _post(
    ctx: typer.Context,
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
    json_output: bool,
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
    output.choose_mode(json_output=json_output)  # fail on bad flags before posting
    settings = state(ctx).settings
    if not dry_run:
        _confirm(settings.confirm_above, amount, f"{kind} of {asset} to {user}", yes=yes)
    with state(ctx).connection() as conn, posting.scope(conn, dry_run=dry_run):
        try:
            receipt = posting.post(conn, kind, **request)  # type: ignore[arg-type]
        except ApprovalRequired:
            if kind == "spend":
                raise
            # Above the asset's approval threshold: the database refused to post it; file
            # it as a request for a second person (README "Four-eyes approval").
            _file_request(conn, kind, request, dry_run=dry_run, json_output=json_output)
            return
        if dry_run:
            _report_budgets(conn, receipt)
    report_receipt(receipt, dry_run=dry_run, generated_key=key is None, json_output=json_output)


def _file_request(
    conn: Any, kind: PostingKind, request: dict[str, Any], *, dry_run: bool, json_output: bool
) -> None:
    from walletctl.cli.policy_commands import report_filed_request
    from walletctl.core import policy

    filed = policy.request_credit(conn, kind, **request)
    report_filed_request(
        filed, policy.show_request(conn, filed.request_id), dry_run=dry_run, json_output=json_output
    )


def _report_budgets(conn: Any, receipt: Receipt) -> None:
    """A dry run shows what the posting would leave of each budget that binds the caller."""
    from walletctl.core import policy

    if receipt.kind == "spend" or receipt.replayed:
        return
    for budget in policy.binding_budgets(conn, receipt.asset):
        output.message(
            f"dry run: budget of {budget.role}: {budget.used_today:,} of "
            f"{budget.daily_limit:,} {budget.asset} used today (UTC) with this posting, "
            f"{budget.remaining:,} would remain"
        )


def _register_posting_command(kind: PostingKind, help_text: str) -> None:
    """topup, bonus and spend share one signature: one row from the arguments, or a file."""

    def command(
        ctx: typer.Context,
        user: UserArgument = None,
        amount: AmountArgument = None,
        asset: options.AssetOption = options.DEFAULT_ASSET,
        key: options.KeyOption = None,
        reason: options.ReasonOption = None,
        actor: options.ActorOption = None,
        yes: options.YesOption = False,
        dry_run: options.DryRunOption = False,
        json_output: options.JsonOption = False,
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
        raw_csv: options.RawCsvOption = False,
        allow_unterminated: options.AllowUnterminatedOption = False,
    ) -> None:
        if file is None:
            bulk_only = [
                name
                for name, value in (
                    ("--format", file_format),
                    ("--key-prefix", key_prefix),
                    ("--validate-only", validate_only),
                    ("--atomic", atomic),
                    ("--skip-invalid", skip_invalid),
                    ("--report", report),
                    ("--max-total", max_total),
                    ("--raw-csv", raw_csv),
                    ("--allow-unterminated", allow_unterminated),
                )
                if value
            ]
            if bulk_only:
                raise InvalidInput(f"{', '.join(bulk_only)} only go with --file")
            if user is None or amount is None:
                raise InvalidInput("give USER and AMOUNT, or --file")
            _post(
                ctx,
                kind,
                user,
                amount,
                asset=asset,
                key=key,
                reason=reason,
                actor=actor,
                yes=yes,
                dry_run=dry_run,
                json_output=json_output,
            )
            return
        if user is not None or amount is not None or key is not None:
            raise InvalidInput(
                "--file takes its users, amounts and keys from the file "
                "(give no USER, AMOUNT or --key)"
            )
        from walletctl.cli.bulk_run import FileRequest, run_file

        run_file(
            ctx,
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
                json_output=json_output,
                raw_csv=raw_csv,
                allow_unterminated=allow_unterminated,
            ),
        )

    command.__name__ = kind
    command.__doc__ = help_text
    app.command(name=kind, help=help_text)(command)


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


@app.command(help="Post the mirror image of a topup, bonus or spend. --reason is required.")
def reverse(
    ctx: typer.Context,
    transaction_id: Annotated[
        str, typer.Argument(help="The transaction to reverse.", show_default=False)
    ],
    reason: options.ReasonOption = None,
    key: options.KeyOption = None,
    actor: options.ActorOption = None,
    yes: options.YesOption = False,
    dry_run: options.DryRunOption = False,
    json_output: options.JsonOption = False,
) -> None:
    from walletctl.core import history, posting, validation

    target_id = parse_transaction_id(transaction_id)
    request = {
        "idempotency_key": validation.idempotency_key(key) if key is not None else _new_key(),
        "reason": validation.reason(reason, required=True),
        "on_behalf_of": validation.on_behalf_of(options.on_behalf_of(actor)),
    }
    output.choose_mode(json_output=json_output)
    with state(ctx).connection() as conn:
        target = history.transaction(conn, target_id)
        if not dry_run:
            _confirm(
                state(ctx).settings.confirm_above,
                target.amount,
                f"reversal of {target.kind} {target_id} ({target.asset}, {target.user_id})",
                yes=yes,
            )
        with posting.scope(conn, dry_run=dry_run):
            receipt = posting.reverse(conn, target_id, **request)  # type: ignore[arg-type]
    report_receipt(receipt, dry_run=dry_run, generated_key=key is None, json_output=json_output)


def parse_transaction_id(text: str) -> int:
    from walletctl.core import validation

    cleaned = text.strip()
    if not cleaned.isascii() or not cleaned.isdigit():
        raise InvalidInput(f"transaction id must be a positive whole number, got {text[:60]!r}")
    return validation.transaction_id(int(cleaned))
