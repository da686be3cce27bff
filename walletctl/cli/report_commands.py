"""balance, audit, reconcile: the commands that read the ledger."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from walletctl.cli import options, output
from walletctl.cli.app import app, state
from walletctl.cli.exit_codes import ExitCode
from walletctl.errors import InvalidInput

if TYPE_CHECKING:
    from walletctl.core.models import Balance, StatementLine, TransactionDetail
    from walletctl.core.policy import CreditRequest

Column = output.Column

BALANCE_COLUMNS = (
    Column("user", "User"),
    Column("asset", "Asset"),
    Column("balance", "Balance", numeric=True),
    Column("updated_at", "Last change"),
)
TREASURY_COLUMNS = (
    Column("asset", "Asset"),
    Column("outstanding", "Outstanding (held by users)", numeric=True),
    Column("holders", "Holders", numeric=True),
    Column("treasury_balance", "Treasury balance", numeric=True),
)
STATEMENT_COLUMNS = (
    Column("created_at", "Time"),
    Column("transaction_id", "Txn", numeric=True),
    Column("kind", "Kind"),
    Column("asset", "Asset"),
    Column("amount", "Amount", numeric=True),
    Column("balance_after", "Balance", numeric=True),
    Column("reason", "Reason"),
    Column("actor", "Actor"),
    Column("on_behalf_of", "On behalf of"),
    Column("idempotency_key", "Key"),
    Column("reverses", "Reverses", numeric=True),
)
ENTRY_COLUMNS = (
    Column("entry_id", "Entry", numeric=True),
    Column("account", "Account"),
    Column("amount", "Amount", numeric=True),
    Column("balance_after", "Balance after", numeric=True),
)


def balance_rows(held: Iterable[Balance]) -> list[dict[str, Any]]:
    return [
        {"user": b.user_id, "asset": b.asset, "balance": b.balance, "updated_at": b.updated_at}
        for b in held
    ]


def statement_rows(lines: Iterable[StatementLine]) -> Iterator[dict[str, Any]]:
    return (
        {column.key: getattr(line, column.key) for column in STATEMENT_COLUMNS} for line in lines
    )


@app.command(
    help="A user's balances (all assets, or --asset), now or --as-of a past time; "
    "or, with --treasury, what all users hold per asset."
)
def balance(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Argument(help="The user's id.", show_default=False)] = None,
    asset: Annotated[
        str | None, typer.Option("--asset", "-a", help="Only this asset.", show_default=False)
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="The balance at this past time (ISO 8601; UTC without an offset).",
            show_default=False,
        ),
    ] = None,
    treasury: Annotated[
        bool, typer.Option("--treasury", help="Outstanding liability per asset.")
    ] = False,
    json_output: options.JsonOption = False,
) -> None:
    from walletctl.core import balances

    out = output.Output(output.choose_mode(json_output=json_output))
    at = options.parse_time(as_of, "--as-of")
    if treasury:
        if user is not None or as_of is not None:
            raise InvalidInput("--treasury takes no user and no --as-of")
        with state(ctx).read_connection() as conn:
            liabilities = balances.outstanding(conn)
        out.table(
            [
                {
                    "asset": row.asset,
                    "outstanding": row.outstanding,
                    "holders": row.holders,
                    "treasury_balance": row.treasury_balance,
                }
                for row in liabilities
            ],
            TREASURY_COLUMNS,
            title="Treasury: outstanding per asset",
        )
        return
    if user is None:
        raise InvalidInput("give a user id, or --treasury")
    from walletctl.core import policy

    with state(ctx).read_connection() as conn:
        data = balance_rows(balances.balances(conn, user, asset=asset, as_of=at))
        freeze = policy.current_freeze(conn, user)
    if freeze is not None:
        since = freeze.created_at.isoformat(sep=" ", timespec="seconds")
        output.message(
            f"{user} is frozen (since {since}, by {freeze.actor}: {freeze.reason}): "
            "no spends or credits until unfrozen"
        )
    if json_output:
        out.record(
            {"user": user, "as_of": at, "balances": data, "frozen": freeze is not None},
            title="balances",
        )
        return
    title = f"Balances of {user}" + (f" as of {at.isoformat()}" if at else "")
    out.table(data, BALANCE_COLUMNS, title=title)


@app.command(
    help="A user's statement with running balance; or one transaction (--txn); "
    "or what an idempotency key did (--key)."
)
def audit(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Argument(help="The user's id.", show_default=False)] = None,
    txn: Annotated[
        str | None,
        typer.Option("--txn", help="Show one transaction and its entries.", show_default=False),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", help="Show what this idempotency key posted.", show_default=False),
    ] = None,
    summary: Annotated[
        bool,
        typer.Option(
            "--summary",
            help="Per asset for the period (--since/--until): issued by top-up and by bonus, "
            "spent, reversed, net change, outstanding at start and end, transactions.",
        ),
    ] = False,
    asset: Annotated[
        str | None, typer.Option("--asset", "-a", help="Only this asset.", show_default=False)
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option("--kind", help="Only topup, bonus, spend or reversal.", show_default=False),
    ] = None,
    since: options.SinceOption = None,
    until: options.UntilOption = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, help="At most this many lines.", show_default=False),
    ] = None,
    json_output: options.JsonOption = False,
    csv_output: options.CsvOption = False,
    raw_csv: options.RawCsvOption = False,
) -> None:
    from walletctl.core import history, policy

    chosen = [
        name
        for name, value in (("USER", user), ("--txn", txn), ("--key", key), ("--summary", summary))
        if value
    ]
    if len(chosen) != 1:
        raise InvalidInput("give exactly one of USER, --txn, --key or --summary")
    out = output.Output(
        output.choose_mode(json_output=json_output, csv_output=csv_output, raw_csv=raw_csv)
    )
    if summary:
        from walletctl.cli.finance_commands import show_summary

        show_summary(ctx, out, since=since, until=until, asset=asset)
        return
    if user is not None:
        where = history.StatementFilter(
            asset=asset,
            kind=kind,
            since=options.parse_time(since, "--since"),
            until=options.parse_time(until, "--until"),
            limit=limit,
        )
        with state(ctx).read_connection() as conn:
            lines = history.statement(conn, user, where)
            out.table(
                statement_rows(lines),
                STATEMENT_COLUMNS,
                title=f"Statement of {user}",
                json_lines=True,
            )
        return
    if txn is not None:
        from walletctl.cli.posting_commands import parse_transaction_id

        transaction_id = parse_transaction_id(txn)
        with state(ctx).read_connection() as conn:
            detail = history.transaction(conn, transaction_id)
            request = policy.request_by_key(conn, detail.idempotency_key)
        _show_transaction(out, detail, request)
        return
    assert key is not None
    with state(ctx).read_connection() as conn:
        found = history.transaction_by_key(conn, key)
        request = policy.request_by_key(conn, key)
    if found is None and request is not None:
        from walletctl.cli.policy_commands import REQUEST_NUMERIC, request_view

        output.message(
            f"key {key} filed request {request.id} ({request.status}); it has posted nothing"
        )
        out.record(request_view(request), title=f"Request {request.id}", numeric=REQUEST_NUMERIC)
        return
    if found is None:
        if json_output:
            out.record({"idempotency_key": key, "transaction": None}, title="key")
        output.message(f"key {key} has not posted anything; a posting with it would be new")
        raise typer.Exit(ExitCode.NOT_FOUND)
    _show_transaction(out, found, request)


def _show_transaction(
    out: output.Output, detail: TransactionDetail, request: CreditRequest | None = None
) -> None:
    entries = [
        {
            "entry_id": entry.entry_id,
            "account": entry.account,
            "amount": entry.amount,
            "balance_after": entry.balance_after,
        }
        for entry in detail.entries
    ]
    header = {
        "transaction_id": detail.transaction_id,
        "kind": detail.kind,
        "user": detail.user_id,
        "asset": detail.asset,
        "amount": detail.amount,
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
        header["request_id"] = request.id
        header["requested_by"] = request.requested_by
        header["approved_by"] = request.decided_by
    if out.mode is output.Mode.JSON:
        out.record({**header, "entries": entries}, title="transaction")
        return
    out.record(header, title=f"Transaction {detail.transaction_id}", numeric=("amount",))
    out.table(
        entries,
        ENTRY_COLUMNS,
        title="Entries",
        footer={"account": "sum", "amount": detail.entries_sum},
    )
