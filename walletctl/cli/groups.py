"""Where commands are registered: the command groups, the help panels, and each command's
exit codes in its --help.

Command modules import ``command`` and the groups from here and never each other; adding a
module (a new group) means importing it in ``walletctl.cli.app._register_commands``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import typer

from walletctl.cli.app import app
from walletctl.cli.exit_codes import ExitCode, epilog

F = TypeVar("F", bound=Callable[..., Any])

POSTING = "Posting"
REPORTS = "Reports"
FINANCE = "Finance"
ADMIN = "Admin"
PANELS = (POSTING, REPORTS, FINANCE, ADMIN)
"""The sections of `walletctl --help`, in order."""


def group(name: str, help_text: str, *, panel: str) -> typer.Typer:
    """A command group (``walletctl NAME SUBCOMMAND``) under a help panel."""
    sub = typer.Typer(help=help_text, rich_markup_mode=None)
    app.add_typer(sub, name=name, rich_help_panel=panel)
    sub.callback(invoke_without_command=True)(_require_subcommand)
    return sub


def _require_subcommand(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        from walletctl.cli.app import state

        state(ctx).env.out.write(ctx.get_help() + "\n")
        raise typer.Exit(ExitCode.INVALID_INPUT)


def command(
    name: str,
    help_text: str,
    *,
    exits: tuple[ExitCode, ...] = (),
    panel: str | None = None,
    on: typer.Typer | None = None,
    database: bool = True,
) -> Callable[[F], F]:
    """Register a command on ``on`` (default: the top level, under ``panel``); its --help
    ends with the exit codes it can return."""
    target = on or app
    return target.command(
        name,
        help=help_text,
        epilog=epilog(*exits, database=database),
        rich_help_panel=panel,
    )


asset_app = group("asset", "Asset types (GOLD, POINTS, ...).", panel=ADMIN)
user_app = group("user", "The users the ledger knows; freezing a user.", panel=REPORTS)
db_app = group("db", "The database: schema, roles, status, the embedded server.", panel=ADMIN)
policy_app = group(
    "policy",
    "Approval thresholds and issuance budgets (changing them needs walletctl_admin).",
    panel=ADMIN,
)
request_app = group(
    "request", "Requests for credits above an asset's approval threshold (four eyes).", panel=ADMIN
)
