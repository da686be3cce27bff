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
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from walletctl.cli import options, output
from walletctl.cli.app import state
from walletctl.cli.exit_codes import ExitCode
from walletctl.cli.files import atomic_text_file, check_writable
from walletctl.errors import InvalidInput, Refused

if TYPE_CHECKING:
    from walletctl.core.bulk import InvalidRow, ParsedFile, RowOutcome
    from walletctl.core.models import Connection, PostingKind

SHOWN_INVALID = 50
REPORT_FIELDS = (
    "line",
    "outcome",
    "user",
    "amount",
    "asset",
    "key",
    "transaction_id",
    "balance_after",
    "detail",
)
SUMMARY_COLUMNS = (
    output.Column("outcome", "Outcome"),
    output.Column("rows", "Rows", numeric=True),
    output.Column("amount", "Amount", numeric=True),
)


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
    json_output: bool
    raw_csv: bool = False
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


def run_file(ctx: typer.Context, kind: PostingKind, request: FileRequest) -> None:
    from walletctl.core import bulk

    if request.fmt is not None and request.fmt not in ("csv", "jsonl"):
        raise InvalidInput(f"--format must be csv or jsonl, got {request.fmt!r}")
    if request.atomic and request.skip_invalid:
        raise InvalidInput("--atomic posts every row or none: it does not go with --skip-invalid")
    out = output.Output(output.choose_mode(json_output=request.json_output))
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
    with state(ctx).connection() as conn:
        parsed = bulk.check_against_ledger(conn, kind, parsed)
        if request.key_prefix is not None:
            _refuse_row_number_keys(conn, request.key_prefix, parsed)
    _say_invalid(parsed.invalid)
    if request.validate_only:
        output.message(f"{name}: {len(parsed.rows)} valid row(s), {len(parsed.invalid)} invalid")
        if request.report is not None:
            _write_report(request.report, [], parsed.invalid, raw_csv=request.raw_csv)
        if parsed.invalid:
            raise typer.Exit(ExitCode.INVALID_INPUT)
        return
    if parsed.invalid and not request.skip_invalid:
        if request.report is not None:
            _write_report(request.report, [], parsed.invalid, raw_csv=request.raw_csv)
        raise InvalidInput(
            f"{name}: {len(parsed.invalid)} invalid row(s); nothing was posted "
            "(fix them, or pass --skip-invalid to post the valid rows)"
        )
    _check_policy(ctx, kind, parsed, request)
    outcomes = _post(ctx, kind, parsed, request)
    if request.report is not None:
        _write_report(request.report, outcomes, parsed.invalid, raw_csv=request.raw_csv)
    _summarise(out, name, kind, outcomes, parsed.invalid, request)
    counts = Counter(outcome.outcome for outcome in outcomes)
    if parsed.invalid or any(
        counts[o] for o in ("conflict", "insufficient", "not_found", "invalid")
    ):
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


def _say_invalid(invalid: list[InvalidRow]) -> None:
    for row in invalid[:SHOWN_INVALID]:
        output.message(f"walletctl: line {row.line}: {row.error}")
    if len(invalid) > SHOWN_INVALID:
        output.message(
            f"walletctl: ... and {len(invalid) - SHOWN_INVALID} more invalid rows "
            "(--report writes them all)"
        )


def _check_policy(
    ctx: typer.Context, kind: PostingKind, parsed: ParsedFile, request: FileRequest
) -> None:
    if request.max_total is not None and parsed.total > request.max_total:
        raise Refused(
            f"the file's rows add up to {parsed.total:,}, above --max-total {request.max_total:,}; "
            "nothing was posted"
        )
    from walletctl.cli.posting_commands import confirm_large_amount

    largest = max((row.amount for row in parsed.rows), default=0)
    threshold = state(ctx).settings.confirm_above
    confirm_large_amount(
        largest,
        threshold,
        yes=request.yes or request.dry_run,
        refusal=f"a row of {largest:,}",
        question=f"{kind}: {len(parsed.rows):,} rows adding up to {parsed.total:,}, the largest "
        f"{largest:,} (above {threshold:,}). Post them?",
        can_ask=request.path != "-",  # stdin holds the file, not an answer
    )


def _post(
    ctx: typer.Context, kind: PostingKind, parsed: ParsedFile, request: FileRequest
) -> list[RowOutcome]:
    from walletctl.core import bulk, posting

    actor = options.on_behalf_of(request.actor)
    # The file's lock lives on a connection of its own, in a transaction open for the run.
    with (
        state(ctx).connection() as lock_conn,
        bulk.file_lock(lock_conn, kind, parsed.digest),
        _progress(len(parsed.rows)) as advance,
    ):
        if not (request.dry_run or request.atomic):
            return bulk.post_rows_in_parallel(
                state(ctx).connection,
                kind,
                parsed.rows,
                on_behalf_of=actor,
                jobs=request.jobs,
                batch_size=request.batch_size,
                progress=advance,
            )
        with state(ctx).connection() as conn:
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
            output.message("dry run: nothing was written")
    return outcomes


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on a terminal; nothing in a pipe."""
    if not sys.stderr.isatty():
        yield lambda done: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("posting", total=total)
        yield lambda done: bar.advance(task, done)


def _report_rows(outcomes: list[RowOutcome], invalid: list[InvalidRow]) -> list[dict[str, Any]]:
    rows = [
        {
            "line": o.line,
            "outcome": o.outcome,
            "user": o.user_id,
            "amount": o.amount,
            "asset": o.asset,
            "key": o.idempotency_key,
            "transaction_id": o.transaction_id,
            "balance_after": o.balance_after,
            "detail": o.detail,
        }
        for o in outcomes
    ]
    rows += [
        {
            "line": bad.line,
            "outcome": "invalid",
            "user": bad.fields.get("user"),
            "amount": bad.fields.get("amount"),
            "asset": bad.fields.get("asset"),
            "key": bad.fields.get("key"),
            "transaction_id": None,
            "balance_after": None,
            "detail": bad.error,
        }
        for bad in invalid
    ]
    return sorted(rows, key=lambda row: row["line"])


def _write_report(
    path: Path, outcomes: list[RowOutcome], invalid: list[InvalidRow], *, raw_csv: bool
) -> None:
    """The per-row report: CSV (formulas neutralised unless --raw-csv), or JSON lines for
    a .jsonl name."""
    rows = _report_rows(outcomes, invalid)
    with atomic_text_file(path, "--report") as out:
        if path.suffix in (".jsonl", ".ndjson", ".json"):
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        else:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(REPORT_FIELDS)
            for row in rows:
                writer.writerow(
                    [output.csv_cell(row[field], raw=raw_csv) for field in REPORT_FIELDS]
                )


def _summarise(
    out: output.Output,
    name: str,
    kind: PostingKind,
    outcomes: list[RowOutcome],
    invalid: list[InvalidRow],
    request: FileRequest,
) -> None:
    counts: Counter[str] = Counter()
    amounts: Counter[str] = Counter()
    for outcome in outcomes:
        counts[outcome.outcome] += 1
        amounts[outcome.outcome] += outcome.amount or 0
    counts["invalid"] += len(invalid)
    from walletctl.core.bulk import OUTCOMES

    rows = [{"outcome": o, "rows": counts[o], "amount": amounts[o]} for o in OUTCOMES]
    if out.mode is output.Mode.JSON:
        out.record(
            {
                "file": name,
                "kind": kind,
                "dry_run": request.dry_run,
                "rows": len(outcomes) + len(invalid),
                "outcomes": {row["outcome"]: row["rows"] for row in rows},
                "amounts": {row["outcome"]: row["amount"] for row in rows},
                "report": str(request.report) if request.report else None,
            },
            title="bulk",
        )
        return
    out.table(rows, SUMMARY_COLUMNS, title=f"{kind} --file {name}")
