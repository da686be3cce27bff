"""The Typer application: global options, and the one place errors become exit codes.

Commands live in the modules imported at the bottom; each parses its options, calls the
core, and hands the result to walletctl.cli.output. None of them prints an error or picks
an exit code itself: they raise walletctl's typed errors and WalletctlGroup.main maps them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from walletctl import __version__
from walletctl.cli import output
from walletctl.cli.exit_codes import EXIT_CODE_HELP, ExitCode, exit_code_for
from walletctl.errors import InvalidInput, WalletError

if TYPE_CHECKING:
    import psycopg

    from walletctl.config import DatabaseTarget, Settings
    from walletctl.replica import ReadServer

# psycopg logs a warning when a rollback fails on a connection already lost; walletctl
# reports the loss itself, in one line (Python would print the warning to stderr too).
logging.getLogger("psycopg").addHandler(logging.NullHandler())

EPILOG = "Exit codes:\n\n" + EXIT_CODE_HELP.replace("\n", "\n\n")


class WalletctlGroup(TyperGroup):
    """Runs the command and turns whatever it raised into one line and an exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(
                args=args,
                prog_name=prog_name or "walletctl",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
            code = result if isinstance(result, int) else ExitCode.OK
        except WalletError as exc:
            output.error(str(exc))
            code = exit_code_for(exc)
        except typer.Abort:
            output.error("aborted; nothing was posted")
            code = ExitCode.REFUSED
        except typer.TyperException as exc:  # usage errors from parsing
            output.error(_usage_message(exc.format_message()))
            code = getattr(exc, "exit_code", ExitCode.INVALID_INPUT)
        except BrokenPipeError:
            # The reader went away (`walletctl audit alice | head`): not an error.
            sys.stderr.close()
            code = ExitCode.OK
        except Exception as exc:
            if os.environ.get("WALLETCTL_TRACEBACK"):
                raise
            lost = _lost_connection(exc)
            if lost is not None:
                output.error(str(lost))
                code = exit_code_for(lost)
            else:
                output.error(
                    f"unexpected {type(exc).__name__}: {exc} "
                    "(set WALLETCTL_TRACEBACK=1 for details)"
                )
                code = ExitCode.UNEXPECTED
        if standalone_mode:
            sys.exit(int(code))
        return int(code)


def _lost_connection(exc: Exception) -> WalletError | None:
    """A connection that broke outside the core's error translation is still exit 6."""
    if "psycopg" not in sys.modules:  # never imported: not a database error
        return None
    import psycopg

    from walletctl.core.sqlerrors import translate

    if isinstance(exc, psycopg.OperationalError | psycopg.InternalError):
        typed = translate(exc)
        return typed if isinstance(typed, WalletError) else None
    return None


_NEGATIVE_NUMBER_OPTION = re.compile(r"No such option: (-[0-9][0-9.]*)")


def _usage_message(message: str) -> str:
    # A negative amount reaches the parser as an unknown option ("-5"); say what it is.
    negative = _NEGATIVE_NUMBER_OPTION.match(message)
    if negative:
        return f"amounts and ids must be positive, got {negative.group(1)}"
    return f"{message} (see --help)"


@dataclass
class State:
    """What the root options decided, shared with every command through ctx.obj."""

    database_url: str | None = None
    read_url: str | None = None
    primary: bool = False
    """--primary: reports read from the primary even when a read server is configured."""
    max_lag: float | None = None
    read_from: ReadServer | None = None
    """The server the report read from, once read_connection has measured it."""
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from walletctl.config import load_settings

            self._settings = load_settings()
        return self._settings

    def target(self) -> DatabaseTarget:
        """The primary: where every write goes. With a read server configured and no
        primary, refused rather than the embedded ledger: that would be another ledger."""
        from walletctl.config import resolve_target

        target = resolve_target(self.database_url, self.settings)
        read = self.read_target()
        if target.embedded and read is not None:
            raise InvalidInput(
                f"a read server is configured ({read.source}) but no primary: set "
                "--database-url, WALLETCTL_DATABASE_URL or database_url in the config file "
                "(postings, reversals, bulk files and seal go to the primary; walletctl will "
                "not use its embedded ledger beside a read server). Nothing was done"
            )
        return target

    def read_target(self) -> DatabaseTarget | None:
        """The read server reports use (a standby), if one is configured."""
        from walletctl.config import resolve_read_target

        return resolve_read_target(self.read_url, self.settings)

    @contextmanager
    def connection(self, *, admin: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A connection to the primary, for every command that is not a report; ``admin``
        for the db commands that change the schema or the roles (on the embedded server:
        its superuser instead of walletctl_local)."""
        from walletctl.database import connect

        with connect(
            self.target(),
            output.message,
            admin=admin,
            prepared_statements=self.settings.prepared_statements,
        ) as conn:
            yield conn

    @contextmanager
    def read_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for a report (balance, audit, summary, user, export, reconcile): the
        read server when one is configured and --primary was not given, else the primary.

        On a read server it first measures how far behind its primary it is: further than
        --max-lag (or unknown, with --max-lag) is refused before anything is read;
        otherwise announce_read_server says where the report comes from."""
        read = None if self.primary else self.read_target()
        if read is None:
            with self.connection() as conn:
                yield conn
            return
        from walletctl import replica
        from walletctl.database import connect

        with connect(
            read, output.message, prepared_statements=self.settings.prepared_statements
        ) as conn:
            server = replica.measure(conn)
            replica.require_within(server, self.max_lag)
            self.announce_read_server(server)
            yield conn

    def announce_read_server(self, server: ReadServer) -> None:
        """The one place a report says where it read: a line on stderr, and a ``read_from``
        object in every JSON object it prints."""
        self.read_from = server
        output.message(server.describe())
        output.annotate_json("read_from", server.to_json())


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj


app = typer.Typer(
    cls=WalletctlGroup,
    name="walletctl",
    help="Administer a closed-loop wallet kept as a double-entry ledger in PostgreSQL.",
    epilog=EPILOG,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        print(f"walletctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="The primary: a libpq URL (postgresql://user@host/db) or key=value string "
            "(host=a,b dbname=wallet target_session_attrs=read-write). Overrides "
            "WALLETCTL_DATABASE_URL, the config file and the PG* variables; without any, "
            "walletctl uses its embedded server. Prefer ~/.pgpass to a password in it.",
            show_default=False,
        ),
    ] = None,
    read_url: Annotated[
        str | None,
        typer.Option(
            "--read-url",
            help="Where reports (balance, audit, user, export, reconcile) read: a streaming "
            "standby, any libpq form. Overrides WALLETCTL_READ_URL and read_url in the config "
            "file. Writes always go to the primary.",
            show_default=False,
        ),
    ] = None,
    primary: Annotated[
        bool,
        typer.Option("--primary", help="Read this report from the primary, not the read URL."),
    ] = False,
    max_lag: Annotated[
        float | None,
        typer.Option(
            "--max-lag",
            min=0,
            help="Refuse (exit 12) to read a report from a standby further behind its "
            "primary than this many seconds, or one that cannot tell.",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    output.clear_annotations()
    ctx.obj = State(database_url=database_url, read_url=read_url, primary=primary, max_lag=max_lag)
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())
        raise typer.Exit(ExitCode.INVALID_INPUT)


def _register_commands() -> None:
    # Imported for their side effect of adding commands to `app`.
    from walletctl.cli import (  # noqa: F401
        admin_commands,
        cluster_commands,
        finance_commands,
        policy_commands,
        posting_commands,
        report_commands,
    )


_register_commands()
