"""reconcile, seal, export, and the period summary (audit --summary): finance's commands."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from walletctl.cli import options, output
from walletctl.cli.app import app, state
from walletctl.cli.exit_codes import ExitCode
from walletctl.cli.files import atomic_text_file
from walletctl.errors import InvalidInput

if TYPE_CHECKING:
    from walletctl.core.reconcile import ReconcileReport

Column = output.Column

CHECK_COLUMNS = (
    Column("check", "Check"),
    Column("status", "Status"),
    Column("checked", "Checked", numeric=True),
    Column("failures", "Failures", numeric=True),
    Column("examples", "Examples"),
)
CHECK_STYLES = {"PASS": "green", "FAIL": "bold red"}
SUMMARY_COLUMNS = (
    Column("asset", "Asset"),
    Column("issued_topup", "Issued: top-ups", numeric=True),
    Column("issued_bonus", "Issued: bonuses", numeric=True),
    Column("spent", "Spent", numeric=True),
    Column("reversed", "Reversed (net)", numeric=True),
    Column("net_change", "Net change", numeric=True),
    Column("outstanding_start", "Outstanding at start", numeric=True),
    Column("outstanding_end", "Outstanding at end", numeric=True),
    Column("transactions", "Transactions", numeric=True),
)


@app.command(
    help="Check the ledger: zero-sum, cached balances, running balances, shapes, reversals, "
    "sealed history. Once something is sealed, checks what came after the last checkpoint "
    "(--full: everything). Exit 7 when any check fails."
)
def reconcile(
    ctx: typer.Context,
    full: Annotated[
        bool, typer.Option("--full", help="Check the whole ledger and re-hash sealed history.")
    ] = False,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            help="Also write the results in the Prometheus text format to this file "
            "(atomically), for node_exporter's textfile collector.",
            show_default=False,
        ),
    ] = None,
    json_output: options.JsonOption = False,
) -> None:
    from walletctl.core.reconcile import reconcile as run_reconcile

    out = output.Output(output.choose_mode(json_output=json_output))
    started = time.monotonic()
    with state(ctx).read_connection() as conn:
        report = run_reconcile(conn, full=full)
    if metrics_file is not None:
        from walletctl.cli import metrics

        metrics.write(metrics_file, report, duration_seconds=time.monotonic() - started)
    show_reconcile_report(out, report)
    for note in report.notes:
        output.message(f"reconcile: {note}")
    if not report.passed:
        output.message(
            f"reconcile: {len(report.failed)} check(s) failed: "
            + ", ".join(check.name for check in report.failed)
        )
        raise typer.Exit(ExitCode.RECONCILE_FAILED)


def show_reconcile_report(out: output.Output, report: ReconcileReport) -> None:
    rows = [
        {
            "check": check.name,
            "status": "PASS" if check.passed else "FAIL",
            "checked": check.checked,
            "failures": check.failures,
            "examples": "; ".join(check.examples),
        }
        for check in report.checks
    ]
    if out.mode is output.Mode.JSON:
        out.record(
            {
                "passed": report.passed,
                "mode": report.mode,
                "sealed_horizon": report.horizon,
                "checks": rows,
                "notes": list(report.notes),
            },
            title="reconcile",
        )
        return
    scope = (
        f"transactions after {report.horizon} (sealed up to there)"
        if report.mode == "incremental"
        else "the whole ledger"
    )
    out.table(rows, CHECK_COLUMNS, title=f"Reconcile: {scope}", styles=CHECK_STYLES)


@app.command(
    help="Seal history (for a daily cron): reconcile, then store a checkpoint hashing every "
    "transaction and entry up to a safe horizon, chained to the previous one; both in one "
    "snapshot, so it seals only what it verified."
)
def seal(
    ctx: typer.Context,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            help="Seconds to wait for postings still in flight below the horizon.",
        ),
    ] = 60.0,
    json_output: options.JsonOption = False,
) -> None:
    from walletctl.core import seal as sealing
    from walletctl.errors import ReconcileFailed

    out = output.Output(output.choose_mode(json_output=json_output))
    with state(ctx).connection() as conn:
        try:
            checkpoint = sealing.seal(conn, wait_seconds=wait)
        except ReconcileFailed as refused:
            show_reconcile_report(output.Output(output.Mode.PLAIN, sys.stderr), refused.report)
            output.message("seal: refused, reconcile found discrepancies (see above)")
            raise typer.Exit(ExitCode.RECONCILE_FAILED) from None
    if isinstance(checkpoint, list):  # a cluster: one checkpoint per partition
        from walletctl.cli.cluster_commands import show_partition_seals

        show_partition_seals(out, checkpoint)
        return
    if checkpoint is None:
        output.message("seal: nothing new to seal")
        if json_output:
            out.record({"checkpoint": None}, title="seal")
        return
    out.record(
        {
            "checkpoint": checkpoint.id,
            "previous_checkpoint": checkpoint.previous_id,
            "sealed_after": checkpoint.previous_horizon,
            "sealed_through": checkpoint.horizon,
            "transactions": checkpoint.transactions,
            "entries": checkpoint.entries,
            "hash": checkpoint.hash.hex(),
            "created_at": checkpoint.created_at,
        },
        title="Checkpoint",
        numeric=("transactions", "entries"),
    )
    output.message(
        f"sealed transactions {checkpoint.previous_horizon + 1}-{checkpoint.horizon}; keep the "
        f"hash {checkpoint.hash.hex()} outside the database to prove it later"
    )


def show_summary(
    ctx: typer.Context,
    out: output.Output,
    *,
    since: str | None,
    until: str | None,
    asset: str | None,
) -> None:
    from dataclasses import asdict

    from walletctl.core.summary import period_summary

    start = options.parse_time(since, "--since")
    end = options.parse_time(until, "--until")
    with state(ctx).read_connection() as conn:
        rows = period_summary(conn, since=start, until=end, asset=asset)
    data = [asdict(row) for row in rows]
    if out.mode is output.Mode.JSON:
        out.record({"since": start, "until": end, "assets": data}, title="summary")
        return
    period = f"{start.isoformat() if start else 'the beginning'} to "
    period += end.isoformat() if end else "now"
    out.table(data, SUMMARY_COLUMNS, title=f"Summary, {period}")


@app.command(
    help="Stream the ledger: csv and jsonl (one row per entry), ledger (an hledger journal) "
    "or beancount. Constant memory for any size."
)
def export(
    ctx: typer.Context,
    fmt: Annotated[
        str,
        typer.Option("--format", help="csv, jsonl, ledger or beancount.", show_default=False),
    ],
    since: options.SinceOption = None,
    until: options.UntilOption = None,
    output_path: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write to this file (whole or not at all) instead of stdout.",
            show_default=False,
        ),
    ] = None,
    raw_csv: options.RawCsvOption = False,
) -> None:
    from walletctl.core import export as exporting

    chosen = next((known for known in exporting.FORMATS if known == fmt), None)
    if chosen is None:
        raise InvalidInput(f"--format must be one of {', '.join(exporting.FORMATS)}, got {fmt!r}")
    if raw_csv and chosen != "csv":
        raise InvalidInput("--raw-csv only goes with --format csv")
    start = options.parse_time(since, "--since")
    end = options.parse_time(until, "--until")
    with state(ctx).read_connection() as conn:
        if output_path is None:
            count = exporting.export(
                conn, sys.stdout, chosen, since=start, until=end, raw_csv=raw_csv
            )
            sys.stdout.flush()
        else:
            with atomic_text_file(output_path, "--output") as out:
                count = exporting.export(conn, out, chosen, since=start, until=end, raw_csv=raw_csv)
    what = "entries" if fmt in ("csv", "jsonl") else "transactions"
    output.message(f"exported {count:,} {what}")
