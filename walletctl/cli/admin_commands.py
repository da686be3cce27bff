"""asset, user and db command groups, and the demo."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import asdict
from typing import Annotated, Any

import typer

from walletctl.cli import options, output
from walletctl.cli.app import app, state
from walletctl.cli.exit_codes import ExitCode

Column = output.Column

asset_app = typer.Typer(help="Asset types (GOLD, POINTS, ...).", no_args_is_help=False)
user_app = typer.Typer(help="The users the ledger knows.")
db_app = typer.Typer(help="The database: schema, status, the embedded server.")
app.add_typer(asset_app, name="asset")
app.add_typer(user_app, name="user")
app.add_typer(db_app, name="db")

ASSET_COLUMNS = (Column("code", "Code"), Column("name", "Name"), Column("created_at", "Created"))
USER_COLUMNS = (
    Column("user", "User"),
    Column("created_at", "Created"),
    Column("balances", "Balances"),
    Column("entries", "Entries", numeric=True),
    Column("frozen", "Frozen"),
)


def _require_subcommand(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())
        raise typer.Exit(ExitCode.INVALID_INPUT)


for group in (asset_app, user_app, db_app):
    group.callback(invoke_without_command=True)(_require_subcommand)


@asset_app.command("add", help="Add an asset type: CODE is 1-32 of A-Z, 0-9, _.")
def asset_add(
    ctx: typer.Context,
    code: Annotated[str, typer.Argument(help="e.g. GOLD", show_default=False)],
    name: Annotated[str, typer.Argument(help="e.g. 'Gold Coins'", show_default=False)],
    if_not_exists: Annotated[
        bool,
        typer.Option(
            "--if-not-exists",
            help="An asset with this code already there is fine (exit 0, left unchanged).",
        ),
    ] = False,
    json_output: options.JsonOption = False,
) -> None:
    from walletctl.core import assets
    from walletctl.errors import AlreadyExists

    out = output.Output(output.choose_mode(json_output=json_output))
    title = "Asset added"
    with state(ctx).connection() as conn:
        try:
            asset = assets.add_asset(conn, code, name)
        except AlreadyExists:
            if not if_not_exists:
                raise
            asset = next(a for a in assets.list_assets(conn) if a.code == code)
            title = "Asset already there"
            output.message(f"asset {code} already exists (named {asset.name!r}); left unchanged")
    out.record(
        {"code": asset.code, "name": asset.name, "created_at": asset.created_at},
        title=title,
    )


@asset_app.command("list", help="List the asset types.")
def asset_list(ctx: typer.Context, json_output: options.JsonOption = False) -> None:
    from walletctl.core import assets

    out = output.Output(output.choose_mode(json_output=json_output))
    with state(ctx).connection() as conn:
        found = assets.list_assets(conn)
    out.table(
        [{"code": a.code, "name": a.name, "created_at": a.created_at} for a in found],
        ASSET_COLUMNS,
        title="Assets",
    )


def _user_row(summary: Any, *, structured: bool) -> dict[str, Any]:
    balances: Any = dict(summary.balances)
    if not structured:
        balances = ", ".join(f"{code} {amount}" for code, amount in summary.balances)
    return {
        "user": summary.user_id,
        "created_at": summary.created_at,
        "balances": balances,
        "entries": summary.transactions,
        "frozen": summary.frozen,
    }


@user_app.command("list", help="List users with their balances, by user id.")
def user_list(
    ctx: typer.Context,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="At most this many.", show_default=False)
    ] = None,
    after: Annotated[
        str | None,
        typer.Option("--after", help="Start after this user id (paging).", show_default=False),
    ] = None,
    json_output: options.JsonOption = False,
    csv_output: options.CsvOption = False,
    raw_csv: options.RawCsvOption = False,
) -> None:
    from walletctl.core import users

    out = output.Output(
        output.choose_mode(json_output=json_output, csv_output=csv_output, raw_csv=raw_csv)
    )
    with state(ctx).connection() as conn:
        out.table(
            (
                _user_row(s, structured=json_output)
                for s in users.list_users(conn, limit=limit, after=after)
            ),
            USER_COLUMNS,
            title="Users",
            json_lines=True,
        )


@user_app.command("show", help="One user: balances and number of entries.")
def user_show(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="The user's id.", show_default=False)],
    json_output: options.JsonOption = False,
) -> None:
    from walletctl.core import users

    out = output.Output(output.choose_mode(json_output=json_output))
    with state(ctx).connection() as conn:
        summary = users.show_user(conn, user)
    out.record(_user_row(summary, structured=json_output), title=f"User {user}")


@db_app.command("upgrade", help="Run the schema migrations up to this walletctl's head.")
def db_upgrade(ctx: typer.Context) -> None:
    from walletctl import database, migrate

    url = database.target_url(state(ctx).target(), output.message)
    with database.open_connection(url) as conn:
        before = database.schema_state(conn).revision
    migrate.upgrade(url)
    if before == database.SCHEMA_HEAD:
        output.message(f"schema already at head ({database.SCHEMA_HEAD})")
    else:
        output.message(f"schema upgraded from {before or 'empty'} to {database.SCHEMA_HEAD}")


@db_app.command(
    "status",
    help="Which database, embedded or server, schema revision vs "
    "head, server version. Never prints a password.",
)
def db_status(ctx: typer.Context, json_output: options.JsonOption = False) -> None:
    from walletctl import database, embedded
    from walletctl.config import mask_url
    from walletctl.roles import deployment_risks, function_drift

    out = output.Output(output.choose_mode(json_output=json_output))
    target = state(ctx).target()
    status: dict[str, Any] = {
        "source": target.source,
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
            out.record(status, title="walletctl database")
            output.message("the embedded server is not running; any command starts it")
            return
        url = server.url()
    assert url is not None
    status["database"] = mask_url(url)
    with database.open_connection(url) as conn:
        status["running"] = True
        status["server_version"] = conn.info.parameter_status("server_version")
        revision = database.schema_state(conn).revision
        drift = function_drift(conn) if revision == database.SCHEMA_HEAD else []
        risks = deployment_risks(conn) if revision is not None else []
    status["schema_revision"] = revision
    status["schema_current"] = revision == database.SCHEMA_HEAD
    status["functions_differing"] = drift
    status["deployment_risks"] = risks
    out.record(status, title="walletctl database")
    for risk in risks:
        output.message(f"warning: {risk} (README: Deploying with least privilege)")
    if drift:
        output.message(
            f"{len(drift)} function(s) differ from this walletctl's SQL at the same revision "
            f"({', '.join(drift)}): someone replaced them, or this walletctl is another build"
        )


MEMBERSHIP_COLUMNS = (
    Column("login_role", "Role"),
    Column("kind", "walletctl role"),
    Column("can_login", "Can log in"),
    Column("superuser", "Superuser"),
)
KindOption = Annotated[
    str,
    typer.Option(
        "--as",
        help="operator, batch, service, finance, approver or admin "
        "(README: Deploying with least privilege).",
    ),
]


@db_app.command(
    "roles",
    help="Create or update walletctl's group roles and this database's privileges "
    "(idempotent; a superuser or CREATEROLE the first time), then list who holds them.",
)
def db_roles(ctx: typer.Context, json_output: options.JsonOption = False) -> None:
    from walletctl import roles

    out = output.Output(output.choose_mode(json_output=json_output))
    with state(ctx).connection(admin=True) as conn:
        roles.ensure_roles(conn)
        members = roles.memberships(conn)
        risks = roles.deployment_risks(conn)
    output.message(f"roles and privileges are up to date ({', '.join(roles.GROUP_ROLES)})")
    for risk in risks:
        output.message(f"warning: {risk} (README: Deploying with least privilege)")
    out.table([asdict(member) for member in members], MEMBERSHIP_COLUMNS, title="walletctl roles")


@db_app.command("grant", help="Make a login role a member of walletctl_KIND.")
def db_grant(ctx: typer.Context, login_role: str, kind: KindOption) -> None:
    from walletctl import roles

    with state(ctx).connection(admin=True) as conn:
        roles.grant(conn, login_role, kind)  # type: ignore[arg-type]
    output.message(f"granted walletctl_{kind} to {login_role}")


@db_app.command("revoke", help="Take walletctl_KIND away from a login role.")
def db_revoke(ctx: typer.Context, login_role: str, kind: KindOption) -> None:
    from walletctl import roles

    with state(ctx).connection(admin=True) as conn:
        roles.revoke(conn, login_role, kind)  # type: ignore[arg-type]
    output.message(f"revoked walletctl_{kind} from {login_role}")


@db_app.command("stop", help="Stop the embedded server (a server named by URL is left alone).")
def db_stop(ctx: typer.Context) -> None:
    from walletctl import embedded
    from walletctl.config import default_data_dir

    data_dir = state(ctx).settings.data_dir or default_data_dir()
    if embedded.stop(data_dir):
        output.message(f"stopped the embedded server in {embedded.pgdata_path(data_dir)}")
    else:
        output.message(f"the embedded server in {embedded.pgdata_path(data_dir)} was not running")


DEMO_DATABASE = "walletctl_demo"
"""The embedded server's database for the demo: the demo never writes to the ledger
walletctl keeps for real work."""


@app.command(
    help="Show the main job end to end: a top-up, a bonus and a spend for a sample "
    "user, then the balance, the statement and the reconcile table. With the embedded "
    f"server it uses a database of its own ({DEMO_DATABASE}); pointed at a configured "
    "server it refuses unless --yes. Its postings have fixed keys: a second run replays "
    "them instead of posting again."
)
def demo(
    ctx: typer.Context,
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
    from walletctl.cli.finance_commands import show_reconcile_report
    from walletctl.cli.report_commands import (
        BALANCE_COLUMNS,
        STATEMENT_COLUMNS,
        balance_rows,
        statement_rows,
    )
    from walletctl.config import mask_url
    from walletctl.core import assets, balances, history, posting
    from walletctl.core.reconcile import reconcile
    from walletctl.errors import AlreadyExists, Refused

    target = state(ctx).target()
    if not target.embedded and not yes:
        assert target.url is not None
        raise Refused(
            f"demo would post sample transactions into {mask_url(target.url)} (from "
            f"{target.source}), where they can never be deleted; run it on the embedded "
            "server (no URL configured) or confirm with --yes"
        )
    out = output.Output(output.choose_mode())
    actor = options.on_behalf_of(None)
    with database.connect(target, output.message, embedded_database=DEMO_DATABASE) as conn:
        with suppress(AlreadyExists):
            assets.add_asset(conn, "GOLD", "Gold Coins")
        for receipt in (
            posting.topup(
                conn,
                user,
                500,
                asset="GOLD",
                idempotency_key=f"demo-{user}-topup",
                on_behalf_of=actor,
                reason="demo purchase",
            ),
            posting.bonus(
                conn,
                user,
                50,
                asset="GOLD",
                idempotency_key=f"demo-{user}-bonus",
                on_behalf_of=actor,
                reason="demo welcome bonus",
            ),
            posting.spend(
                conn,
                user,
                120,
                asset="GOLD",
                idempotency_key=f"demo-{user}-spend",
                on_behalf_of=actor,
                reason="demo purchase in the app",
            ),
        ):
            done = "already posted by an earlier demo" if receipt.replayed else "posted"
            output.message(
                f"{receipt.kind} of {receipt.amount} GOLD {done}: transaction "
                f"{receipt.transaction_id}, balance {receipt.balance_after}"
            )
        out.table(
            balance_rows(balances.balances(conn, user)),
            BALANCE_COLUMNS,
            title=f"Balances of {user}",
        )
        out.table(
            statement_rows(history.statement(conn, user)),
            STATEMENT_COLUMNS,
            title=f"Statement of {user}",
        )
        report = reconcile(conn)
    show_reconcile_report(out, report)
    if not report.passed:
        raise typer.Exit(ExitCode.RECONCILE_FAILED)
