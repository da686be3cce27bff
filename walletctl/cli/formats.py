"""The output options every command that prints data takes, added in one place.

``@prints(...)`` adds ``--format table|tsv|csv|json|jsonl`` and its aliases (``--json``,
``--csv``, ``--raw-csv``), and where asked ``--output FILE`` and ``--no-pager``, to a
command's signature; the command receives the resulting ``Output`` as its ``out``
parameter and never looks at the options itself. ``--json`` is the command's JSON form:
one document (``--format json``), except for the listings that stream (statements, user
lists, ``balance --all``, requests), which it gives as JSON lines (``--format jsonl``), as
in earlier versions.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from walletctl.cli.output import FORMAT_NAMES, Format, Output
from walletctl.errors import InvalidInput

F = TypeVar("F", bound=Callable[..., Any])

FORMAT_HELP = (
    "table (a terminal's default), tsv (a pipe's default), csv, json (one document) or "
    "jsonl (one object per line)."
)


def prints(*, output_file: bool = False, pager: bool = False) -> Callable[[F], F]:
    """Give a command the output options. ``output_file``: --output FILE (written whole or
    not at all). ``pager``: --no-pager (long tables go through $PAGER on a terminal)."""

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        if "ctx" not in signature.parameters:
            raise TypeError(f"{command.__name__}: a command that prints takes ctx")
        visible = [p for p in signature.parameters.values() if p.name != "out"]
        added = _option_parameters(output_file=output_file, pager=pager)

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            raw_csv = kwargs.pop("raw_csv")
            json_alias = kwargs.pop("json_alias")
            chosen = _chosen_format(
                kwargs.pop("format_name"),
                json_alias=json_alias,
                csv_alias=kwargs.pop("csv_alias"),
                raw_csv=raw_csv,
            )
            path = kwargs.pop("output_path", None)
            no_pager = kwargs.pop("no_pager", False)
            quiet = kwargs.pop("quiet")
            from walletctl.cli.app import state

            env = state(kwargs["ctx"]).env
            env.use_pager = not no_pager
            env.quiet = env.quiet or quiet
            if chosen in (Format.JSON, Format.JSONL):
                env.errors_as_json = True
            with _destination(path) as stream:
                on_terminal = env.stdout_isatty and stream is None
                fmt = chosen or (Format.TABLE if on_terminal else Format.TSV)
                out = Output(env, fmt, raw_csv=raw_csv, stream=stream, json_alias=json_alias)
                return command(*args, out=out, **kwargs)

        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*visible, *added]
        )
        run.__annotations__ = {
            **{p.name: p.annotation for p in visible},
            **{p.name: p.annotation for p in added},
            "return": signature.return_annotation,
        }
        return run  # type: ignore[return-value]

    return decorate


def _chosen_format(
    name: str | None, *, json_alias: bool, csv_alias: bool, raw_csv: bool
) -> Format | None:
    aliases = [flag for flag, given in (("--json", json_alias), ("--csv", csv_alias)) if given]
    if raw_csv and json_alias:
        raise InvalidInput("--json and --raw-csv cannot be used together")
    if len(aliases) > 1:
        raise InvalidInput(f"{' and '.join(aliases)} cannot be used together")
    if name is not None:
        if name not in FORMAT_NAMES:
            raise InvalidInput(f"--format must be one of {', '.join(FORMAT_NAMES)}, got {name!r}")
        if aliases:
            raise InvalidInput(f"--format {name} and {aliases[0]} cannot be used together")
        if raw_csv and name != "csv":
            raise InvalidInput(f"--raw-csv goes with --format csv, not --format {name}")
        return Format(name)
    if json_alias:
        return Format.JSON
    if csv_alias or raw_csv:
        return Format.CSV
    return None


@contextmanager
def _destination(path: Path | None) -> Iterator[Any]:
    """Where the output goes: stdout (None), or a file written whole or not at all."""
    if path is None:
        yield None
        return
    from walletctl.cli.files import atomic_text_file

    with atomic_text_file(path, "--output") as stream:
        yield stream


OutputPathOption = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Write to this file (whole or not at all) instead of stdout.",
        show_default=False,
    ),
]
QuietOption = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No messages on stderr (errors are still reported)."),
]
QUIET_PARAMETER = inspect.Parameter(
    "quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=QuietOption
)


def _option_parameters(*, output_file: bool, pager: bool) -> list[inspect.Parameter]:
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter(
            "format_name",
            keyword,
            default=None,
            annotation=Annotated[
                str | None,
                typer.Option("--format", help=FORMAT_HELP, show_default=False),
            ],
        ),
        inspect.Parameter(
            "json_alias",
            keyword,
            default=False,
            annotation=Annotated[
                bool, typer.Option("--json", help="JSON: --format json (jsonl for listings).")
            ],
        ),
        inspect.Parameter(
            "csv_alias",
            keyword,
            default=False,
            annotation=Annotated[
                bool,
                typer.Option(
                    "--csv",
                    help="--format csv: cells a spreadsheet would run as a formula get a "
                    "leading '.",
                ),
            ],
        ),
        inspect.Parameter(
            "raw_csv",
            keyword,
            default=False,
            annotation=Annotated[
                bool,
                typer.Option(
                    "--raw-csv",
                    help="CSV with every value as it is, for programs (no leading ').",
                ),
            ],
        ),
    ]
    parameters.append(QUIET_PARAMETER)
    if output_file:
        parameters.append(
            inspect.Parameter(
                "output_path",
                keyword,
                default=None,
                annotation=OutputPathOption,
            )
        )
    if pager:
        parameters.append(
            inspect.Parameter(
                "no_pager",
                keyword,
                default=False,
                annotation=Annotated[
                    bool,
                    typer.Option(
                        "--no-pager",
                        help="Never page (default: long tables on a terminal go "
                        "through $PAGER, or less).",
                    ),
                ],
            )
        )
    return parameters
