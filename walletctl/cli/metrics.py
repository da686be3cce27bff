"""reconcile's results in the Prometheus text format, for node_exporter's textfile collector.

The file is written whole or not at all: to a temporary file in the same directory, then
renamed over the target, so the collector never reads half a file.
"""

from __future__ import annotations

import time
from pathlib import Path

from walletctl.cli.files import atomic_text_file
from walletctl.core.reconcile import ReconcileReport


def render(report: ReconcileReport, *, duration_seconds: float, finished_at: float) -> str:
    def label(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    lines = [
        "# HELP walletctl_reconcile_passed 1 if every reconcile check passed, else 0.",
        "# TYPE walletctl_reconcile_passed gauge",
        f'walletctl_reconcile_passed{{mode="{report.mode}"}} {int(report.passed)}',
        "# HELP walletctl_reconcile_check_passed 1 if the check passed, else 0.",
        "# TYPE walletctl_reconcile_check_passed gauge",
    ]
    lines += [
        f'walletctl_reconcile_check_passed{{check="{label(c.name)}"}} {int(c.passed)}'
        for c in report.checks
    ]
    lines += [
        "# HELP walletctl_reconcile_check_failures Rows that failed the check.",
        "# TYPE walletctl_reconcile_check_failures gauge",
    ]
    lines += [
        f'walletctl_reconcile_check_failures{{check="{label(c.name)}"}} {c.failures}'
        for c in report.checks
    ]
    lines += [
        "# HELP walletctl_reconcile_check_checked Rows the check examined.",
        "# TYPE walletctl_reconcile_check_checked gauge",
    ]
    lines += [
        f'walletctl_reconcile_check_checked{{check="{label(c.name)}"}} {c.checked}'
        for c in report.checks
    ]
    lines += [
        "# HELP walletctl_reconcile_sealed_horizon Highest transaction id sealed so far.",
        "# TYPE walletctl_reconcile_sealed_horizon gauge",
        f"walletctl_reconcile_sealed_horizon {report.horizon}",
        "# HELP walletctl_reconcile_duration_seconds How long reconcile took.",
        "# TYPE walletctl_reconcile_duration_seconds gauge",
        f"walletctl_reconcile_duration_seconds {duration_seconds:.6f}",
        "# HELP walletctl_reconcile_last_run_timestamp_seconds When reconcile finished.",
        "# TYPE walletctl_reconcile_last_run_timestamp_seconds gauge",
        f"walletctl_reconcile_last_run_timestamp_seconds {finished_at:.3f}",
    ]
    return "\n".join(lines) + "\n"


def write(path: Path, report: ReconcileReport, *, duration_seconds: float) -> None:
    text = render(report, duration_seconds=duration_seconds, finished_at=time.time())
    with atomic_text_file(path, "--metrics-file") as out:
        out.write(text)
