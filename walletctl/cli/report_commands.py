"""balance and audit: the commands that read the ledger, a user or a period at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from walletctl.cli import options, views
from walletctl.cli.app import state
from walletctl.cli.exit_codes import ExitCode
from walletctl.cli.formats import prints
from walletctl.cli.groups import REPORTS, command
from walletctl.cli.output import Format, Listing, Output, Record
from walletctl.cli.paging import Page
from walletctl.errors import InvalidInput

if TYPE_CHECKING:
    from walletctl.cli.app import State
    from walletctl.core.models import TransactionDetail
    from walletctl.core.policy import CreditRequest
    from walletctl.core.summary import ReportFilter


@command(
    "balance",
    "A user's balances (all assets, or --asset), now or --as-of a past time; with "
    "--treasury, what all users hold per asset; with --all, every user with a column per "
    "asset (streams).",
    exits=(ExitCode.NOT_FOUND, ExitCode.STANDBY_BEHIND),
    panel=REPORTS,
)
@prints(output_file=True, pager=True)
def balance(
    ctx: typer.Context,
    out: Output,
    user: Annotated[str | None, typer.Argument(help="The user's id.", show_default=False)] = None,
    asset: options.AssetFilter = None,
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
    every_user: Annotated[
        bool,
        typer.Option("--all", help="Every user: one row per user, one column per asset (streams)."),
    ] = False,
    limit: options.LimitOption = None,
    after: Annotated[
        str | None,
        typer.Option("--after", help="With --all: start after this user id.", show_default=False),
    ] = None,
) -> None:
    from walletctl.core import balances, policy

    current = state(ctx)
    at = options.parse_time(as_of, "--as-of")
    if sum((user is not None, treasury, every_user)) != 1:
        raise InvalidInput("give a user id, --treasury or --all")
    if (limit is not None or after is not None) and not every_user:
        raise InvalidInput("--limit and --after go with --all")
    if treasury:
        if as_of is not None or asset is not None:
            raise InvalidInput("--treasury takes no --as-of and no --asset")
        with current.read_connection() as conn:
            liabilities = balances.outstanding(conn)
        out.listing(
            Listing(
                [views.outstanding(row) for row in liabilities],
                views.TREASURY_COLUMNS,
                title="Treasury: outstanding per asset",
                name="assets",
            )
        )
        return
    if every_user:
        if as_of is not None or asset is not None:
            raise InvalidInput("--all takes no --as-of and no --asset")
        table = out.format is Format.TABLE
        _all_balances(current, out, limit=options.row_limit(limit, False, table=table), after=after)
        return
    assert user is not None
    with current.read_connection() as conn:
        held = [views.balance(b) for b in balances.balances(conn, user, asset=asset, as_of=at)]
        freeze = policy.current_freeze(conn, user)
    if freeze is not None:
        since = freeze.created_at.isoformat(sep=" ", timespec="seconds")
        out.env.message(
            f"{user} is frozen (since {since}, by {freeze.actor}: {freeze.reason}): "
            "no spends or credits until unfrozen"
        )
    title = f"Balances of {user}" + (f" as of {at.isoformat()}" if at else "")
    out.listing(
        Listing(
            held,
            views.BALANCE_COLUMNS,
            title=title,
            name="balances",
            meta={"user": user, "as_of": at, "frozen": freeze is not None},
        )
    )


def _all_balances(current: State, out: Output, *, limit: int | None, after: str | None) -> None:
    from walletctl.core import assets, users

    with current.read_connection() as conn:
        codes = [found.code for found in assets.list_assets(conn)]
        found = users.list_users(conn, limit=Page.fetch(limit), after=after, with_entries=False)
        page = Page((views.balances_row(summary) for summary in found), limit, "user")
        out.listing(
            Listing(
                page,
                (views.BALANCE_COLUMNS[0], *views.asset_columns(codes)),
                title="Balances of every user",
                name="users",
                meta=lambda: {"assets": codes, "next_after": page.next_after},
                note=lambda: page.note("users", everything="a larger --limit, or --format tsv"),
                streams=True,
            )
        )


@command(
    "audit",
    "A user's statement with running balance; one transaction (--txn); what an "
    "idempotency key did (--key); a period's summary per asset (--summary); or what each "
    "operator did, per asset and kind (--by-actor).",
    exits=(ExitCode.NOT_FOUND, ExitCode.STANDBY_BEHIND),
    panel=REPORTS,
)
@prints(output_file=True, pager=True)
def audit(
    ctx: typer.Context,
    out: Output,
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
    by_actor: Annotated[
        bool,
        typer.Option(
            "--by-actor",
            help="Per operator (the recorded actor, a database role), asset and kind for the "
            "period: how many transactions and their net amount.",
        ),
    ] = False,
    asset: options.AssetFilter = None,
    kind: options.KindFilter = None,
    actor: options.ActorFilter = None,
    on_behalf_of: options.OnBehalfOfFilter = None,
    reason: options.ReasonFilter = None,
    since: options.SinceOption = None,
    until: options.UntilOption = None,
    limit: options.LimitOption = None,
    every_line: options.AllOption = False,
    newest_first: options.NewestFirstOption = False,
    after: Annotated[
        str | None,
        typer.Option(
            "--after",
            help="Continue after this transaction (a statement's cursor: the next page).",
            show_default=False,
        ),
    ] = None,
) -> None:
    from walletctl.core.summary import ReportFilter

    current = state(ctx)
    chosen = [
        name
        for name, value in (
            ("USER", user),
            ("--txn", txn),
            ("--key", key),
            ("--summary", summary),
            ("--by-actor", by_actor),
        )
        if value
    ]
    if len(chosen) != 1:
        raise InvalidInput("give exactly one of USER, --txn, --key, --summary or --by-actor")
    paging = [
        name
        for name, value in (
            ("--limit", limit),
            ("--all", every_line),
            ("--newest-first", newest_first),
            ("--after", after),
        )
        if value
    ]
    if user is None and paging:
        raise InvalidInput(f"{', '.join(paging)} go with a USER's statement")
    where = ReportFilter(kind=kind, actor=actor, on_behalf_of=on_behalf_of, reason=reason)
    if summary or by_actor:
        _period_report(
            current, out, by_actor=by_actor, since=since, until=until, asset=asset, where=where
        )
        return
    if user is not None:
        _statement(
            current,
            out,
            user,
            where,
            asset=asset,
            since=since,
            until=until,
            limit=options.row_limit(limit, every_line, table=out.format is Format.TABLE),
            newest_first=newest_first,
            after=None if after is None else options.parse_transaction_id(after, "--after"),
        )
        return
    filters = [
        name
        for name, value in (
            ("--asset", asset),
            ("--kind", kind),
            ("--actor", actor),
            ("--on-behalf-of", on_behalf_of),
            ("--reason", reason),
            ("--since", since),
            ("--until", until),
        )
        if value
    ]
    if filters:
        raise InvalidInput(f"{', '.join(filters)} do not go with {chosen[0]}")
    if txn is not None:
        _transaction(current, out, txn)
    else:
        assert key is not None
        _key(current, out, key)


def _statement(
    current: State,
    out: Output,
    user: str,
    where: ReportFilter,
    *,
    asset: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    newest_first: bool,
    after: int | None,
) -> None:
    from walletctl.core import history

    selection = history.StatementFilter(
        asset=asset,
        kind=where.kind,
        actor=where.actor,
        on_behalf_of=where.on_behalf_of,
        reason=where.reason,
        since=options.parse_time(since, "--since"),
        until=options.parse_time(until, "--until"),
        limit=Page.fetch(limit),
        newest_first=newest_first,
        after=after,
    )
    order = "newest first" if newest_first else "oldest first"
    with current.read_connection() as conn:
        totals = [
            views.statement_total(total)
            for total in history.statement_totals(conn, user, selection)
        ]
        selected = sum(total["entries"] for total in totals)
        page = Page(
            (views.statement_line(line) for line in history.statement(conn, user, selection)),
            limit,
            "transaction_id",
        )
        out.listing(
            Listing(
                page,
                views.STATEMENT_COLUMNS,
                title=f"Statement of {user} ({order})",
                name="entries",
                meta=lambda: {"user": user, "totals": totals, "next_after": page.next_after},
                note=lambda: page.note("lines", None if after else selected),
                streams=True,
            )
        )


def _period_report(
    current: State,
    out: Output,
    *,
    by_actor: bool,
    since: str | None,
    until: str | None,
    asset: str | None,
    where: ReportFilter,
) -> None:
    from walletctl.core import summary

    start = options.parse_time(since, "--since")
    end = options.parse_time(until, "--until")
    period = f"{start.isoformat() if start else 'the beginning'} to "
    period += end.isoformat() if end else "now"
    meta = {
        "since": start,
        "until": end,
        "filters": {key: value for key, value in where.params().items() if value is not None},
    }
    with current.read_connection() as conn:
        if by_actor:
            found = summary.by_actor(conn, since=start, until=end, asset=asset, where=where)
            listing = Listing(
                [views.actor_total(row) for row in found],
                views.BY_ACTOR_COLUMNS,
                title=f"By actor, {period}",
                name="actors",
                meta=meta,
            )
        else:
            rows = summary.period_summary(conn, since=start, until=end, asset=asset, where=where)
            listing = Listing(
                [views.period_summary(row) for row in rows],
                views.SUMMARY_COLUMNS,
                title=f"Summary, {period}",
                name="assets",
                meta=meta,
                note=None
                if where.selects_all
                else "Outstanding is the whole ledger's: left blank when a filter selects "
                "some transactions.",
            )
    out.listing(listing)


def _transaction(current: State, out: Output, txn: str) -> None:
    from walletctl.core import history, policy

    transaction_id = options.parse_transaction_id(txn, "--txn")
    with current.read_connection() as conn:
        detail = history.transaction(conn, transaction_id)
        request = policy.request_by_key(conn, detail.idempotency_key)
    _show_transaction(out, detail, request)


def _key(current: State, out: Output, key: str) -> None:
    from walletctl.core import history, policy

    with current.read_connection() as conn:
        found = history.transaction_by_key(conn, key)
        request = policy.request_by_key(conn, key)
    if found is None and request is not None:
        out.env.message(
            f"key {key} filed request {request.id} ({request.status}); it has posted nothing"
        )
        out.record(
            Record(
                views.request(request), title=f"Request {request.id}", numeric=views.REQUEST_NUMERIC
            )
        )
        return
    if found is None:
        from walletctl.errors import NotFound

        raise NotFound(f"key {key!r} has not posted anything; a posting with it would be new")
    _show_transaction(out, found, request)


def _show_transaction(
    out: Output, detail: TransactionDetail, request: CreditRequest | None
) -> None:
    header = views.transaction(detail, request)
    out.document(
        Record(
            header,
            title=f"Transaction {header['transaction_id']}",
            numeric=views.TRANSACTION_NUMERIC,
        ),
        Listing(
            [views.entry(found) for found in detail.entries],
            views.ENTRY_COLUMNS,
            title="Entries",
            name="entries",
            footer={"account": "sum", "amount": header["entries_sum"]},
        ),
    )
