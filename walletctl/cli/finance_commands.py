"""reconcile, seal, export: finance's commands over the whole ledger."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from walletctl.cli import options, views
from walletctl.cli.app import state
from walletctl.cli.exit_codes import ExitCode
from walletctl.cli.files import atomic_text_file
from walletctl.cli.formats import OutputPathOption, QuietOption, prints
from walletctl.cli.groups import FINANCE, command
from walletctl.cli.output import Format, Listing, Output, Record
from walletctl.errors import InvalidInput

if TYPE_CHECKING:
    from walletctl.core.reconcile import ReconcileReport


@command(
    "reconcile",
    "Check the ledger: zero-sum, cached balances, running balances, shapes, reversals, "
    "sealed history. Once something is sealed, checks what came after the last checkpoint "
    "(--full: everything). Exit 7 when any check fails.",
    exits=(ExitCode.RECONCILE_FAILED, ExitCode.STANDBY_BEHIND),
    panel=FINANCE,
)
@prints(output_file=True)
def reconcile(
    ctx: typer.Context,
    out: Output,
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
) -> None:
    from walletctl.core.reconcile import reconcile as run_reconcile

    env = out.env
    started = time.monotonic()
    with state(ctx).read_connection() as conn:
        report = run_reconcile(conn, full=full)
    if metrics_file is not None:
        from walletctl.cli import metrics

        metrics.write(metrics_file, report, duration_seconds=time.monotonic() - started)
    show_reconcile(out, report)
    for note in report.notes:
        env.message(f"reconcile: {note}")
    if not report.passed:
        env.message(
            f"reconcile: {len(report.failed)} check(s) failed: "
            + ", ".join(check.name for check in report.failed)
        )
        raise typer.Exit(ExitCode.RECONCILE_FAILED)


def show_reconcile(out: Output, report: ReconcileReport) -> None:
    scope = (
        f"transactions after {report.horizon} (sealed up to there)"
        if report.mode == "incremental"
        else "the whole ledger"
    )
    out.document(
        Record(views.reconcile(report), title="Reconcile"),
        Listing(
            views.checks(report),
            views.CHECK_COLUMNS,
            title=f"Reconcile: {scope}",
            name="checks",
            styles=views.CHECK_STYLES,
        ),
        show_record=False,
    )


@command(
    "seal",
    "Seal history (for a daily cron): reconcile, then store a checkpoint hashing every "
    "transaction and entry up to a safe horizon, chained to the previous one; both in one "
    "snapshot, so it seals only what it verified.",
    exits=(ExitCode.RECONCILE_FAILED, ExitCode.REFUSED),
    panel=FINANCE,
)
@prints()
def seal(
    ctx: typer.Context,
    out: Output,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            help="Seconds to wait for postings still in flight below the horizon.",
        ),
    ] = 60.0,
) -> None:
    from walletctl.core import seal as sealing
    from walletctl.errors import ReconcileFailed

    env = out.env
    with state(ctx).connection() as conn:
        try:
            checkpoint = sealing.seal(conn, wait_seconds=wait)
        except ReconcileFailed as refused:
            show_reconcile(Output(env, Format.TSV, stream=env.err), refused.report)
            env.message("seal: refused, reconcile found discrepancies (see above)")
            raise typer.Exit(ExitCode.RECONCILE_FAILED) from None
    if isinstance(checkpoint, list):  # a cluster: one checkpoint per partition
        out.listing(
            Listing(
                [views.partition_seal(partition, sealed) for partition, sealed in checkpoint],
                views.PARTITION_SEAL_COLUMNS,
                title="Sealed, per partition",
                name="partitions",
            )
        )
        env.message(
            "sealed each partition; keep each partition's hash outside the database to prove "
            "it later"
        )
        return
    if checkpoint is None:
        env.message("seal: nothing new to seal")
        out.record(Record({"checkpoint": None}, title="Nothing new to seal"))
        return
    out.committed(
        Record(views.checkpoint(checkpoint), title="Checkpoint", numeric=views.CHECKPOINT_NUMERIC)
    )
    env.message(
        f"sealed transactions {checkpoint.previous_horizon + 1}-{checkpoint.horizon}; keep the "
        f"hash {checkpoint.hash.hex()} outside the database to prove it later"
    )


EXPORT_FORMATS = ("csv", "jsonl", "ledger", "beancount")


@command(
    "export",
    "Stream the ledger: csv and jsonl (one row per entry), ledger (an hledger journal) or "
    "beancount, with the chart of accounts in the README. Constant memory for any size.",
    exits=(ExitCode.NOT_FOUND, ExitCode.STANDBY_BEHIND),
    panel=FINANCE,
)
def export(
    ctx: typer.Context,
    fmt: Annotated[
        str,
        typer.Option("--format", help="csv, jsonl, ledger or beancount.", show_default=False),
    ],
    since: options.SinceOption = None,
    until: options.UntilOption = None,
    kind: options.KindFilter = None,
    actor: options.ActorFilter = None,
    on_behalf_of: options.OnBehalfOfFilter = None,
    reason: options.ReasonFilter = None,
    output_path: OutputPathOption = None,
    raw_csv: Annotated[
        bool,
        typer.Option(
            "--raw-csv",
            help="With --format csv: every value as it is, for programs (no leading ').",
        ),
    ] = False,
    json_report: Annotated[
        bool,
        typer.Option(
            "--json",
            help="With --output: print what was written as one JSON object on stdout.",
        ),
    ] = False,
    quiet: QuietOption = False,
) -> None:
    from walletctl.core import export as exporting
    from walletctl.core.summary import ReportFilter

    env = state(ctx).env
    env.quiet = env.quiet or quiet
    chosen = next((known for known in exporting.FORMATS if known == fmt), None)
    if chosen is None:
        raise InvalidInput(f"--format must be one of {', '.join(exporting.FORMATS)}, got {fmt!r}")
    if raw_csv and chosen != "csv":
        raise InvalidInput("--raw-csv only goes with --format csv")
    if json_report and output_path is None:
        raise InvalidInput("the export itself goes to stdout; --json reports on an --output file")
    where = ReportFilter(kind=kind, actor=actor, on_behalf_of=on_behalf_of, reason=reason)
    start = options.parse_time(since, "--since")
    end = options.parse_time(until, "--until")
    with state(ctx).read_connection() as conn:
        if output_path is None:
            count = exporting.export(
                conn, env.out, chosen, since=start, until=end, raw_csv=raw_csv, where=where
            )
            env.out.flush()
        else:
            with atomic_text_file(output_path, "--output") as stream:
                count = exporting.export(
                    conn, stream, chosen, since=start, until=end, raw_csv=raw_csv, where=where
                )
    what = "entries" if chosen in ("csv", "jsonl") else "transactions"
    singular = {"entries": "entry", "transactions": "transaction"}[what]
    env.message(f"exported {count:,} {what if count != 1 else singular}")
    if json_report:
        Output(env, Format.JSON).record(
            Record(
                {"format": chosen, what: count, "output": str(output_path)},
                title="export",
            )
        )
