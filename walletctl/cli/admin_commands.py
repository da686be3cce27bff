"""asset, user and db command groups, and the demo."""

from __future__ import annotations

from contextlib import suppress
from typing import Annotated, Any

import typer

from walletctl.cli import options, views
from walletctl.cli.app import state
from walletctl.cli.exit_codes import ExitCode
from walletctl.cli.formats import prints
from walletctl.cli.groups import ADMIN, asset_app, command, db_app, user_app
from walletctl.cli.output import Format, Listing, Output, Record
from walletctl.cli.paging import Page


@command(
    "add",
    "Add an asset type: CODE is 1-24 of A-Z, 0-9, _, starting with a letter.",
    exits=(ExitCode.CONFLICT,),
    on=asset_app,
)
@prints()
def asset_add(
    ctx: typer.Context,
    out: Output,
    code: Annotated[str, typer.Argument(help="e.g. GOLD", show_default=False)],
    name: Annotated[str, typer.Argument(help="e.g. 'Gold Coins'", show_default=False)],
    if_not_exists: Annotated[
        bool,
        typer.Option(
            "--if-not-exists",
            help="An asset with this code already there is fine (exit 0, left unchanged).",
        ),
    ] = False,
) -> None:
    from walletctl.core import assets
    from walletctl.errors import AlreadyExists

    title = "Asset added"
    with state(ctx).connection() as conn:
        try:
            asset = assets.add_asset(conn, code, name)
        except AlreadyExists:
            if not if_not_exists:
                raise
            asset = next(a for a in assets.list_assets(conn) if a.code == code)
            title = "Asset already there"
            out.env.message(f"asset {code} already exists (named {asset.name!r}); left unchanged")
    out.committed(Record(views.asset(asset), title=title))


@command("list", "List the asset types.", on=asset_app)
@prints(output_file=True)
def asset_list(ctx: typer.Context, out: Output) -> None:
    from walletctl.core import assets

    with state(ctx).connection() as conn:
        found = assets.list_assets(conn)
    out.listing(
        Listing([views.asset(a) for a in found], views.ASSET_COLUMNS, title="Assets", name="assets")
    )


@command(
    "list",
    "List users with their balances (a column per asset): by user id, or newest first.",
    exits=(ExitCode.NOT_FOUND, ExitCode.STANDBY_BEHIND),
    on=user_app,
)
@prints(output_file=True, pager=True)
def user_list(
    ctx: typer.Context,
    out: Output,
    limit: options.LimitOption = None,
    every_user: options.AllOption = False,
    newest_first: options.NewestFirstOption = False,
    after: Annotated[
        str | None,
        typer.Option(
            "--after", help="Start after this user id (the next page).", show_default=False
        ),
    ] = None,
) -> None:
    from walletctl.core import assets, users

    limit = options.row_limit(limit, every_user, table=out.format is Format.TABLE)
    structured = out.format in (Format.JSON, Format.JSONL)
    with state(ctx).read_connection() as conn:
        codes = [found.code for found in assets.list_assets(conn)]
        total = users.count_users(conn)
        found = users.list_users(
            conn, limit=Page.fetch(limit), after=after, newest_first=newest_first
        )
        page = Page(
            ((views.user if structured else views.user_row)(summary) for summary in found),
            limit,
            "user",
        )
        out.listing(
            Listing(
                page,
                (*views.USER_COLUMNS, *views.asset_columns(codes)),
                title="Users (newest first)" if newest_first else "Users",
                name="users",
                meta=lambda: {"total": total, "next_after": page.next_after},
                note=lambda: page.note("users", total),
                streams=True,
            )
        )


@command(
    "show",
    "One user: balances, number of entries, frozen or not.",
    exits=(ExitCode.NOT_FOUND, ExitCode.STANDBY_BEHIND),
    on=user_app,
)
@prints()
def user_show(
    ctx: typer.Context,
    out: Output,
    user: Annotated[str, typer.Argument(help="The user's id.", show_default=False)],
) -> None:
    from walletctl.core import users

    with state(ctx).read_connection() as conn:
        summary = users.show_user(conn, user)
    view = views.user(summary)
    out.document(
        Record(
            {k: v for k, v in view.items() if k != "balances"},
            title=f"User {user}",
            numeric=("entries",),
        ),
        Listing(
            view["balances"], views.BALANCE_COLUMNS, title=f"Balances of {user}", name="balances"
        ),
    )


@command(
    "upgrade",
    "Run the schema migrations up to this walletctl's head (a superuser, or a member of "
    "walletctl_owner).",
    on=db_app,
)
@prints()
def db_upgrade(ctx: typer.Context, out: Output) -> None:
    from walletctl import database, migrate

    url = database.target_url(state(ctx).target(), out.env.message)
    with database.open_connection(url) as conn:
        before = database.schema_state(conn).revision
    migrate.upgrade(url)
    if before == database.SCHEMA_HEAD:
        out.env.message(f"schema already at head ({database.SCHEMA_HEAD})")
    else:
        out.env.message(f"schema upgraded from {before or 'empty'} to {database.SCHEMA_HEAD}")
    out.committed(
        Record(
            {
                "schema_before": before,
                "schema_revision": database.SCHEMA_HEAD,
                "upgraded": before != database.SCHEMA_HEAD,
            },
            title="Schema",
        )
    )


@command(
    "status",
    "Which database and why (option, environment, config file, PG* variables or the "
    "embedded default), the server it reached, schema revision vs head, server version, and "
    "the read server with its lag when one is configured. Never prints a password.",
    on=db_app,
)
@prints()
def db_status(ctx: typer.Context, out: Output) -> None:
    from walletctl import conninfo, database, embedded
    from walletctl.roles import deployment_risks, function_drift

    target = state(ctx).target()
    status: dict[str, Any] = {
        "source": target.source,
        "why": target.reason or None,
        "mode": "embedded" if target.embedded else "server",
        "database": None,
        "data_dir": str(target.data_dir) if target.data_dir else None,
        "running": None,
        "server_version": None,
        "schema_revision": None,
        "schema_head": database.SCHEMA_HEAD,
        "schema_current": None,
    }
    url = target.url
    if target.embedded:
        assert target.data_dir is not None
        server = embedded.running_server(target.data_dir)
        status["running"] = server is not None
        if server is None:
            status["server_version"] = embedded.server_version(target.data_dir)
            out.record(Record(status, title="walletctl database"))
            out.env.message("the embedded server is not running; any command starts it")
            return
        url = server.url()
    assert url is not None
    status["database"] = target.shown if not target.embedded else conninfo.masked(url)
    with database.open_connection(url) as conn:
        status["running"] = True
        status["connected_to"] = _connected_to(conn)
        status["through_pooler"] = database.behind_pooler(conn)
        status["server_version"] = conn.info.parameter_status("server_version")
        revision = database.schema_state(conn).revision
        drift = function_drift(conn) if revision == database.SCHEMA_HEAD else []
        risks = deployment_risks(conn) if revision is not None else []
    status["schema_revision"] = revision
    status["schema_current"] = revision == database.SCHEMA_HEAD
    status["functions_differing"] = drift
    status["deployment_risks"] = risks
    read = state(ctx).read_target()
    if read is not None:
        status["read"] = _read_status(read)
    out.record(Record(status, title="walletctl database"))
    for risk in risks:
        out.env.message(f"warning: {risk} (README: Deploying with least privilege)")
    if drift:
        out.env.message(
            f"{len(drift)} function(s) differ from this walletctl's SQL at the same revision "
            f"({', '.join(drift)}): someone replaced them, or this walletctl is another build"
        )


def _connected_to(conn: Any) -> str:
    info = conn.info
    return f"host={info.host} port={info.port} dbname={info.dbname} user={info.user}"


def _read_status(read: Any) -> dict[str, Any]:
    """Where reports read, and how far behind it is (or why it cannot be reached)."""
    from walletctl import database, replica
    from walletctl.errors import WalletError

    shown: dict[str, Any] = {"source": read.source, "database": read.shown}
    try:
        with database.open_connection(read.url) as conn:
            shown["connected_to"] = _connected_to(conn)
            shown.update(replica.measure(conn).to_json())
    except WalletError as exc:
        shown["error"] = str(exc)
    return shown


KindOption = Annotated[
    str,
    typer.Option(
        "--as",
        help="operator, batch, service, finance, approver or admin "
        "(README: Deploying with least privilege).",
    ),
]


@command(
    "roles",
    "Create or update walletctl's group roles and this database's privileges "
    "(idempotent; a superuser or CREATEROLE the first time), then list who holds them.",
    on=db_app,
)
@prints()
def db_roles(ctx: typer.Context, out: Output) -> None:
    from walletctl import database, roles

    with state(ctx).connection(admin=True, require_schema=False) as conn:
        revision = database.schema_state(conn).revision
        roles.ensure_roles(conn, privileges=revision is not None)
        members = roles.memberships(conn)
        risks = roles.deployment_risks(conn) if revision is not None else []
    if revision is None:
        out.env.message(
            f"group roles are up to date ({', '.join(roles.GROUP_ROLES)}); this database has "
            "no walletctl schema yet, so no privileges were granted in it (walletctl db "
            "upgrade, or a restore, then db roles again)"
        )
    else:
        out.env.message(f"roles and privileges are up to date ({', '.join(roles.GROUP_ROLES)})")
    for risk in risks:
        out.env.message(f"warning: {risk} (README: Deploying with least privilege)")
    out.listing(
        Listing(
            [views.membership(member) for member in members],
            views.MEMBERSHIP_COLUMNS,
            title="walletctl roles",
            name="memberships",
        )
    )


def _role_change(granted: bool) -> None:
    verb = "grant" if granted else "revoke"

    @prints()
    def change(
        ctx: typer.Context,
        out: Output,
        login_role: Annotated[str, typer.Argument(help="A login role.", show_default=False)],
        kind: KindOption,
    ) -> None:
        from walletctl import roles

        # Roles are the server's: a database with no walletctl schema yet may be given them.
        with state(ctx).connection(admin=True, require_schema=False) as conn:
            (roles.grant if granted else roles.revoke)(conn, login_role, kind)  # type: ignore[arg-type]
        out.env.message(
            f"granted walletctl_{kind} to {login_role}"
            if granted
            else f"revoked walletctl_{kind} from {login_role}"
        )
        out.committed(
            Record(
                {"login_role": login_role, "kind": kind, "member": granted},
                title=f"walletctl_{kind}",
            )
        )

    change.__name__ = f"db_{verb}"
    command(
        verb,
        "Make a login role a member of walletctl_KIND (as a superuser, or a role with "
        "CREATEROLE; the group roles are the server's, so the database may have no "
        "walletctl schema yet)."
        if granted
        else "Take walletctl_KIND away from a login role (as a superuser, or a role with "
        "CREATEROLE).",
        exits=(ExitCode.NOT_FOUND, ExitCode.NOT_PERMITTED),
        on=db_app,
    )(change)


_role_change(True)
_role_change(False)


@command(
    "stop",
    "Stop the embedded server (a server named by URL is left alone).",
    on=db_app,
    database=False,
)
@prints()
def db_stop(ctx: typer.Context, out: Output) -> None:
    from walletctl import embedded
    from walletctl.config import default_data_dir

    data_dir = state(ctx).settings.data_dir or default_data_dir()
    stopped = embedded.stop(data_dir)
    where = embedded.pgdata_path(data_dir)
    if stopped:
        out.env.message(f"stopped the embedded server in {where}")
    else:
        out.env.message(f"the embedded server in {where} was not running")
    out.record(Record({"data_dir": str(where), "was_running": stopped}, title="Embedded server"))


DEMO_DATABASE = "walletctl_demo"
"""The embedded server's database for the demo: the demo never writes to the ledger
walletctl keeps for real work."""


DEMO_SECTIONS = ("balances", "entries", "checks")


@command(
    "demo",
    "Show the main job end to end: a top-up, a bonus and a spend for a sample "
    "user, then the balance, the statement and the reconcile table. With the embedded "
    f"server it uses a database of its own ({DEMO_DATABASE}); pointed at a configured "
    "server it refuses unless --yes. Its postings have fixed keys: a second run replays "
    "them instead of posting again.",
    exits=(ExitCode.REFUSED, ExitCode.RECONCILE_FAILED),
    panel=ADMIN,
)
@prints()
def demo(
    ctx: typer.Context,
    out: Output,
    user: Annotated[str, typer.Option("--user", help="The sample user.")] = "demo-user",
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "-y",
            help="Post the demo into the configured server's ledger (rows there can never "
            "be deleted).",
        ),
    ] = False,
) -> None:
    from walletctl import database
    from walletctl.core import assets, balances, history, posting
    from walletctl.core.reconcile import reconcile
    from walletctl.errors import AlreadyExists, Refused

    out.check_sections(DEMO_SECTIONS)  # before anything is posted
    current = state(ctx)
    target = current.target()
    if not target.embedded and not yes:
        assert target.url is not None
        raise Refused(
            f"demo would post sample transactions into {target.shown} (from "
            f"{target.source}), where they can never be deleted; run it on the embedded "
            "server (no URL configured) or confirm with --yes"
        )
    actor = options.on_behalf_of(None)
    steps = (
        ("topup", 500, "demo purchase"),
        ("bonus", 50, "demo welcome bonus"),
        ("spend", 120, "demo purchase in the app"),
    )
    with database.connect(target, current.env.message, embedded_database=DEMO_DATABASE) as conn:
        with suppress(AlreadyExists):
            assets.add_asset(conn, "GOLD", "Gold Coins")
        receipts = []
        for kind, amount, reason in steps:
            receipt = posting.post(
                conn,
                kind,  # type: ignore[arg-type]
                user,
                amount,
                asset="GOLD",
                idempotency_key=f"demo-{user}-{kind}",
                on_behalf_of=actor,
                reason=reason,
            )
            done = "already posted by an earlier demo" if receipt.replayed else "posted"
            current.env.message(
                f"{receipt.kind} of {receipt.amount} GOLD {done}: transaction "
                f"{receipt.transaction_id}, balance {receipt.balance_after}"
            )
            receipts.append(views.receipt(receipt))
        held = [views.balance(b) for b in balances.balances(conn, user)]
        lines = [views.statement_line(line) for line in history.statement(conn, user)]
        report = reconcile(conn)
    out.sections(
        [
            Listing(held, views.BALANCE_COLUMNS, title=f"Balances of {user}", name="balances"),
            Listing(lines, views.STATEMENT_COLUMNS, title=f"Statement of {user}", name="entries"),
            Listing(
                views.checks(report),
                views.CHECK_COLUMNS,
                title="Reconcile: the whole ledger",
                name="checks",
                styles=views.CHECK_STYLES,
            ),
        ],
        meta={"receipts": receipts, "passed": report.passed},
    )
    if not report.passed:
        raise typer.Exit(ExitCode.RECONCILE_FAILED)
