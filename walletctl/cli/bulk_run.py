"""topup|bonus|spend --file: validate a whole file, then post it in batches.

Order of business: check that the report can be written; read the file (from stdin, a
last line without its newline is refused as possibly cut short); validate every row, in
itself and then against the ledger (unknown assets, and for spends unknown users, are bad
rows too); nothing is posted while any row is bad, unless --skip-invalid; --max-total and
the confirmation threshold; the file's lock (a second run of the same file at the same
moment exits 8); the batches; the report; the summary. Exit 0 when every row was posted or
replayed, 9 when some were not.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from walletctl.cli import options, views
from walletctl.cli.exit_codes import ExitCode
from walletctl.cli.files import atomic_text_file, check_writable
from walletctl.cli.output import Listing, Output, csv_cell, to_json
from walletctl.core.values import balance_change
from walletctl.errors import InvalidInput, OutputNotWritten, Refused

if TYPE_CHECKING:
    from walletctl.cli.app import State
    from walletctl.cli.env import Environment
    from walletctl.core.bulk import InvalidRow, ParsedFile, RowOutcome
    from walletctl.core.models import Connection, PostingKind

SHOWN_INVALID = 50


@dataclass(frozen=True)
class FileRequest:
    path: str
    fmt: str | None
    asset: str
    key_prefix: str | None
    reason: str | None
    actor: str | None
    validate_only: bool
    skip_invalid: bool
    atomic: bool
    report: Path | None
    max_total: int | None
    batch_size: int
    jobs: int
    yes: bool
    dry_run: bool
    allow_unterminated: bool = False


def _read(path: str, *, allow_unterminated: bool) -> tuple[bytes, str]:
    if path == "-":
        from walletctl.core.bulk import check_terminated

        data = sys.stdin.buffer.read()
        if not allow_unterminated:
            check_terminated(data, "<stdin>")
        return data, "<stdin>"
    try:
        return Path(path).read_bytes(), path
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None


def run_file(current: State, out: Output, kind: PostingKind, request: FileRequest) -> None:
    from walletctl.core import bulk

    if request.fmt is not None and request.fmt not in ("csv", "jsonl"):
        raise InvalidInput(f"--file-format must be csv or jsonl, got {request.fmt!r}")
    if request.atomic and request.skip_invalid:
        raise InvalidInput("--atomic posts every row or none: it does not go with --skip-invalid")
    env = out.env
    raw_csv = out.raw_csv
    if request.report is not None:
        check_writable(request.report, "--report")
    data, name = _read(request.path, allow_unterminated=request.allow_unterminated)
    parsed = bulk.parse_file(
        data,
        name=name,
        kind=kind,
        default_asset=request.asset,
        key_prefix=request.key_prefix,
        default_reason=request.reason,
        fmt=request.fmt,  # type: ignore[arg-type]
    )
    with current.connection() as conn:
        parsed = bulk.check_against_ledger(conn, kind, parsed)
        if request.key_prefix is not None:
            _refuse_row_number_keys(conn, request.key_prefix, parsed)
    _say_invalid(env, parsed.invalid)
    if request.validate_only:
        env.message(f"{name}: {len(parsed.rows)} valid row(s), {len(parsed.invalid)} invalid")
        if request.report is not None:
            _write_report(request.report, kind, [], parsed.invalid, raw_csv=raw_csv)
        if parsed.invalid:
            raise typer.Exit(ExitCode.INVALID_INPUT)
        return
    if parsed.invalid and not request.skip_invalid:
        if request.report is not None:
            _write_report(request.report, kind, [], parsed.invalid, raw_csv=raw_csv)
        raise InvalidInput(
            f"{name}: {len(parsed.invalid)} invalid row(s); nothing was posted "
            "(fix them, or pass --skip-invalid to post the valid rows)"
        )
    _check_policy(current, kind, parsed, request)
    outcomes = _post(current, kind, parsed, request)
    result = bulk.tally(outcomes, parsed.invalid)
    unwritten = None
    if request.report is not None:
        try:
            _write_report(request.report, kind, outcomes, parsed.invalid, raw_csv=raw_csv)
        except InvalidInput as exc:  # checked before posting; a device can still refuse
            unwritten = exc
    _summarise(out, name, kind, result, request)
    if unwritten is not None:
        raise OutputNotWritten(
            f"{unwritten}; the file was processed ({result.rows['posted']} row(s) posted, "
            f"{result.rows['replayed']} replayed, {result.failed} not posted: the summary "
            "says which outcomes): run the same file again to write the report, its rows "
            "replay"
        )
    if not result.complete:
        raise typer.Exit(ExitCode.PARTIAL)


def _refuse_row_number_keys(conn: Connection, prefix: str, parsed: ParsedFile) -> None:
    from walletctl.core import bulk

    in_use = bulk.row_number_keys_in_use(conn, prefix, len(parsed.rows) + len(parsed.invalid))
    if in_use:
        raise InvalidInput(
            f"--key-prefix {prefix}: the ledger holds key(s) {', '.join(in_use)}, the keys "
            "earlier versions gave rows by row number; this version keys rows by what they "
            "are, so running the file again with this prefix would post its rows again. "
            "Nothing was posted: if the file was posted already, leave it; otherwise choose "
            "a new prefix"
        )


def _say_invalid(env: Environment, invalid: list[InvalidRow]) -> None:
    for row in invalid[:SHOWN_INVALID]:
        env.message(f"walletctl: line {row.line}: {row.error}")
    if len(invalid) > SHOWN_INVALID:
        env.message(
            f"walletctl: ... and {len(invalid) - SHOWN_INVALID} more invalid rows "
            "(--report writes them all)"
        )


def _check_policy(
    current: State, kind: PostingKind, parsed: ParsedFile, request: FileRequest
) -> None:
    if request.max_total is not None and parsed.total > request.max_total:
        raise Refused(
            f"the file's rows add up to {parsed.total:,}, above --max-total {request.max_total:,}; "
            "nothing was posted"
        )
    largest = max((row.amount for row in parsed.rows), default=0)
    current.confirmation().check(
        largest,
        what=f"{kind}: {len(parsed.rows):,} rows adding up to {parsed.total:,}, the largest",
        confirmed=request.yes or request.dry_run,
        # stdin holds the file, not an answer
        ask=current.asker() if request.path != "-" else None,
    )


def _post(
    current: State, kind: PostingKind, parsed: ParsedFile, request: FileRequest
) -> list[RowOutcome]:
    from walletctl.core import bulk, posting

    actor = options.on_behalf_of(request.actor)
    # The file's lock lives on a connection of its own, in a transaction open for the run
    # (walletctl.core.locks: it holds through transaction pooling, and dies with the run).
    with (
        current.connection() as lock_conn,
        bulk.file_lock(lock_conn, kind, parsed.digest),
        _progress(current.env, len(parsed.rows)) as advance,
    ):
        if not (request.dry_run or request.atomic):
            return bulk.post_rows_in_parallel(
                current.connection,
                kind,
                parsed.rows,
                on_behalf_of=actor,
                jobs=request.jobs,
                batch_size=request.batch_size,
                progress=advance,
            )
        with current.connection() as conn:
            if request.atomic and not request.dry_run:
                # One batch on one connection: its locks are taken in one sorted order.
                return list(
                    bulk.post_rows(
                        conn, kind, parsed.rows, on_behalf_of=actor, progress=advance, atomic=True
                    )
                )
            # A dry run: one transaction for the whole file, rolled back: later batches see
            # what earlier ones would have done.
            with posting.scope(conn, dry_run=True):
                outcomes = list(
                    bulk.post_rows(
                        conn,
                        kind,
                        parsed.rows,
                        on_behalf_of=actor,
                        batch_size=request.batch_size,
                        progress=advance,
                        atomic=request.atomic,
                    )
                )
            current.env.message("dry run: nothing was written")
    return outcomes


@contextmanager
def _progress(env: Environment, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on a terminal; nothing in a pipe or under --quiet."""
    if not env.stderr_isatty or env.quiet:
        yield lambda done: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(file=env.err), transient=True) as bar:
        task = bar.add_task("posting", total=total)
        yield lambda done: bar.advance(task, done)


def _report_rows(
    kind: PostingKind, outcomes: list[RowOutcome], invalid: list[InvalidRow]
) -> list[dict[str, Any]]:
    rows = [views.bulk_outcome(kind, outcome) for outcome in outcomes]
    rows += [views.bulk_invalid(bad) for bad in invalid]
    return sorted(rows, key=lambda row: row["line"])


def _write_report(
    path: Path,
    kind: PostingKind,
    outcomes: list[RowOutcome],
    invalid: list[InvalidRow],
    *,
    raw_csv: bool,
) -> None:
    """The per-row report: CSV (formulas neutralised unless --raw-csv), or JSON lines for
    a .jsonl name."""
    rows = _report_rows(kind, outcomes, invalid)
    with atomic_text_file(path, "--report") as out:
        if path.suffix in (".jsonl", ".ndjson", ".json"):
            for row in rows:
                out.write(json.dumps(to_json(row), ensure_ascii=False, default=str) + "\n")
        else:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(views.BULK_REPORT_FIELDS)
            for row in rows:
                writer.writerow(
                    [csv_cell(row[field], raw=raw_csv) for field in views.BULK_REPORT_FIELDS]
                )


def _summarise(
    out: Output,
    name: str,
    kind: PostingKind,
    result: Any,
    request: FileRequest,
) -> None:
    from walletctl.core.bulk import OUTCOMES

    rows = [
        {
            "outcome": outcome,
            "rows": result.rows[outcome],
            "amount": balance_change(kind, result.amounts[outcome]),
        }
        for outcome in OUTCOMES
    ]
    out.listing(
        Listing(
            rows,
            views.BULK_SUMMARY_COLUMNS,
            title=f"{kind} --file {name}",
            name="summary",
            meta={
                "file": name,
                "kind": kind,
                "dry_run": request.dry_run,
                "rows": result.total_rows,
                "outcomes": {row["outcome"]: row["rows"] for row in rows},
                "amounts": {row["outcome"]: row["amount"] for row in rows},
                "report": str(request.report) if request.report else None,
            },
        )
    )
