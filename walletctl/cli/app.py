"""The Typer application: global options, the help, and the one place errors become exit
codes.

Commands live in the modules imported at the bottom (registered through
walletctl.cli.groups); each parses its options, calls the core, and hands views
(walletctl.cli.views) to its ``Output``. None of them prints an error or picks an exit
code itself: they raise walletctl's typed errors and WalletctlGroup.main maps them.
"""

from __future__ import annotations

import json
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
from walletctl.cli import env as environment
from walletctl.cli.env import Environment
from walletctl.cli.exit_codes import EXIT_CODE_HELP, ExitCode, error_name, exit_code_for
from walletctl.errors import InvalidInput, WalletError

if TYPE_CHECKING:
    import psycopg

    from walletctl.config import DatabaseTarget, Settings
    from walletctl.replica import ReadServer

# psycopg logs a warning when a rollback fails on a connection already lost; walletctl
# reports the loss itself, in one line (Python would print the warning to stderr too).
logging.getLogger("psycopg").addHandler(logging.NullHandler())

EPILOG = (
    "Exit codes (each command's --help lists its own):\n\n\b\n"
    + EXIT_CODE_HELP
    + "\n\nA reader that closes the pipe early (walletctl user list | head) ends walletctl "
    "quietly with exit 0."
)
PANEL_ORDER = ("Posting", "Reports", "Finance", "Admin")


class WalletctlGroup(TyperGroup):
    """Runs the command and turns whatever it raised into one line (or one JSON object)
    on stderr and an exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        given = extra.pop("obj", None)
        env = environment.use(given if isinstance(given, Environment) else Environment())
        arguments = list(sys.argv[1:] if args is None else args)
        env.errors_as_json = _asks_for_json(arguments)
        try:
            result = super().main(
                args=arguments,
                prog_name=prog_name or "walletctl",
                complete_var=complete_var,
                standalone_mode=False,
                obj=State(env=env),
                **extra,
            )
            code = result if isinstance(result, int) else ExitCode.OK
            env.out.flush()
        except (BrokenPipeError, ReaderWentAway):
            code = _reader_went_away(env)
        except WalletError as exc:
            code = _fail(env, exit_code_for(exc), str(exc))
        except typer.Abort:
            code = _fail(env, ExitCode.REFUSED, "aborted; nothing was posted")
        except typer.TyperException as exc:  # usage errors from parsing
            message = _usage_message(exc.format_message(), arguments)
            code = _fail(env, ExitCode(getattr(exc, "exit_code", 2) or 2), message)
        except Exception as exc:
            if os.environ.get("WALLETCTL_TRACEBACK"):
                raise
            lost = _lost_connection(exc)
            if lost is not None:
                code = _fail(env, exit_code_for(lost), str(lost))
            else:
                code = _fail(
                    env,
                    ExitCode.UNEXPECTED,
                    f"unexpected {type(exc).__name__}: {exc} "
                    "(set WALLETCTL_TRACEBACK=1 for details)",
                )
        if standalone_mode:
            sys.exit(int(code))
        return int(code)

    def invoke(self, ctx: Any) -> Any:
        # Click turns a broken pipe into exit 1 whatever the mode; it is not a failure here.
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise ReaderWentAway() from None

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The commands in sections: posting, reports, finance, admin."""
        sections: dict[str, list[tuple[str, str]]] = {}
        for name in self.list_commands(ctx):
            found = self.get_command(ctx, name)
            if found is None or found.hidden:
                continue
            panel = getattr(found, "rich_help_panel", None) or "Other"
            limit = formatter.width - 6 - len(name)
            sections.setdefault(panel, []).append((name, found.get_short_help_str(limit)))
        order = [*PANEL_ORDER, *sorted(set(sections) - set(PANEL_ORDER))]
        for panel in order:
            if panel in sections:
                with formatter.section(panel):
                    formatter.write_dl(sections[panel])


class ReaderWentAway(Exception):
    """stdout's reader closed the pipe."""


def _fail(env: Environment, code: ExitCode, message: str) -> ExitCode:
    """The one line (or JSON object) an error gets on stderr."""
    if env.errors_as_json:
        document = {"error": {"code": int(code), "name": error_name(code), "message": message}}
        env._write_err(json.dumps(document, ensure_ascii=False))
    else:
        env.error_line(message)
    return code


def _reader_went_away(env: Environment) -> ExitCode:
    """The reader closed the pipe (`walletctl user list | head -1`): that is how it says it
    has read enough, not an error; like other tools in a `set -o pipefail` script, exit 0.
    stdout is pointed at /dev/null so that the interpreter's last flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, env.out.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return ExitCode.OK


def _asks_for_json(arguments: Sequence[str]) -> bool:
    """Errors are JSON when the command line asks for JSON output, even an error found
    while the command line itself is parsed."""
    for index, argument in enumerate(arguments):
        if argument == "--":
            return False
        if argument == "--json" or argument in ("--format=json", "--format=jsonl"):
            return True
        if argument == "--format" and arguments[index + 1 : index + 2] in (["json"], ["jsonl"]):
            return True
    return False


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


_UNKNOWN_OPTION = re.compile(r"No such option: (-[0-9][0-9.,_]*)")


def _usage_message(message: str, arguments: Sequence[str]) -> str:
    # A negative amount reaches the parser as short options ("-123" is -1 -2 -3, and the
    # parser names the first): say what it is, quoting the argument as it was typed.
    negative = _UNKNOWN_OPTION.match(message)
    if negative:
        typed = next(
            (arg for arg in arguments if arg.startswith(negative.group(1))), negative.group(1)
        )
        return f"amounts and ids must be positive, got {typed}"
    return f"{message} (see --help)"


@dataclass
class State:
    """What the root options decided, shared with every command through ctx.obj."""

    env: Environment = field(default_factory=environment.current)
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
    def connection(
        self, *, admin: bool = False, require_schema: bool = True
    ) -> Iterator[psycopg.Connection[Any]]:
        """A connection to the primary, for every command that is not a report; ``admin``
        for the db commands that change the schema or the roles (on the embedded server:
        its superuser instead of walletctl_local); without ``require_schema`` for those
        that manage the server's roles, which a database with no schema yet may need."""
        from walletctl.database import connect

        with connect(
            self.target(),
            self.env.message,
            admin=admin,
            prepared_statements=self.settings.prepared_statements,
            require_schema=require_schema,
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

        primary_lsn = self._primary_flush_lsn() if self.max_lag is not None else None
        with connect(
            read, self.env.message, prepared_statements=self.settings.prepared_statements
        ) as conn:
            server = replica.measure(conn, primary_lsn=primary_lsn)
            replica.require_within(server, self.max_lag)
            self.announce_read_server(server)
            yield conn

    def _primary_flush_lsn(self) -> str | None:
        """The primary's flushed WAL position, for --max-lag to compare a standby with (a
        stalled stream looks caught up from the standby alone); None when the primary does
        not answer: then the standby's own measure decides (a standby whose primary is gone
        soon stops receiving, and is refused), or none is configured (reports need only the
        read server)."""
        import psycopg

        from walletctl import replica
        from walletctl.database import connect

        try:
            with connect(
                self.target(),
                self.env.message,
                prepared_statements=self.settings.prepared_statements,
                require_schema=False,
            ) as primary:
                return replica.primary_flush_lsn(primary)
        except (WalletError, psycopg.Error):
            return None

    def announce_read_server(self, server: ReadServer) -> None:
        """The one place a report says where it read: a note on stderr (even under
        --quiet), and a ``read_from`` object in its --format json document."""
        self.read_from = server
        self.env.notice(server.describe())
        self.env.report_fields["read_from"] = server.to_json()

    def confirmation(self) -> Any:
        """The confirmation policy (walletctl.core.confirmation) with this run's threshold."""
        from walletctl.core.confirmation import ConfirmationPolicy

        return ConfirmationPolicy(self.settings.confirm_above)

    def asker(self) -> Any:
        """Who can answer a confirmation: the person at the terminal, if stdin is one."""
        if not self.env.stdin_isatty:
            return None
        return lambda question: typer.confirm(question, err=True)


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj


app = typer.Typer(
    cls=WalletctlGroup,
    name="walletctl",
    help="Administer a closed-loop wallet kept as a double-entry ledger in PostgreSQL.",
    epilog=EPILOG,
    add_completion=True,
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
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No messages on stderr (errors are still reported)."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_show_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    current = ctx.obj if isinstance(ctx.obj, State) else State()
    current.database_url = database_url
    current.read_url = read_url
    current.primary = primary
    current.max_lag = max_lag
    current.env.quiet = quiet
    ctx.obj = current
    if ctx.invoked_subcommand is None:
        current.env.out.write(ctx.get_help() + "\n")
        raise typer.Exit(ExitCode.INVALID_INPUT)


def _register_commands() -> None:
    # Imported for their side effect of adding commands to `app` (through cli.groups).
    from walletctl.cli import (  # noqa: F401
        admin_commands,
        cluster_commands,
        finance_commands,
        policy_commands,
        posting_commands,
        report_commands,
    )


_register_commands()
