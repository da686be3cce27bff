"""The whole-ledger procedures on a cluster: reconcile, seal and export run on each
partition in turn, through a direct connection as the role logged in to the proxy (never
through PL/Proxy, which holds every result in memory), their results combined."""

from __future__ import annotations

import io
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO, cast

from walletctl.cluster.reads import on_every_partition, on_partition
from walletctl.cluster.topology import Partition, Topology
from walletctl.core.models import Connection

if TYPE_CHECKING:
    from walletctl.core.checkpoints import Checkpoint
    from walletctl.core.reconcile import ReconcileReport


def reconcile(proxy: Connection, found: Topology, *, full: bool = False) -> ReconcileReport:
    """reconcile on every partition, and the cluster's own check: each partition holds only
    its users and its transaction ids. A failing row is named with its partition."""
    from walletctl.cluster.placement import merge_reports
    from walletctl.core import reconcile as core

    def partition_report(conn: Connection) -> tuple[ReconcileReport, tuple[int, int, int, int]]:
        from walletctl.cluster.placement import misplaced

        return core.reconcile(conn, full=full), misplaced(conn, found.count)

    return merge_reports(found, on_every_partition(proxy, found, partition_report))


def seal(
    proxy: Connection, found: Topology, *, wait_seconds: float = 60.0
) -> list[tuple[Partition, Checkpoint | None]]:
    """Seal every partition in turn (each its own chain of checkpoints, its own hash to
    keep, each reconciled and sealed in one snapshot of its own). The whole cluster is
    reconciled first, so that a discrepancy on one partition (or a user on the wrong one)
    seals none: ReconcileFailed carries that report."""
    from walletctl.core import seal as core
    from walletctl.errors import ReconcileFailed

    report = reconcile(proxy, found)
    if not report.passed:
        raise ReconcileFailed("reconcile found discrepancies: nothing was sealed", report=report)
    return on_every_partition(proxy, found, core.seal, wait_seconds=wait_seconds)


def export(
    proxy: Connection,
    found: Topology,
    out: TextIO,
    fmt: Any,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    raw_csv: bool = False,
    where: Any = None,
) -> int:
    """Each partition's export in turn, streamed from that partition (not through PL/Proxy,
    which holds every result in memory), written as one file: the CSV header and the
    beancount header's options, Treasury and commodities once. Partition by partition, so
    ordered by time within a partition only (hledger and beancount sort by date); each
    partition is read in its own snapshot."""
    from walletctl.core import export as core

    written = 0
    for partition in found.partitions:
        target = out if partition.number == 0 else _OnceOnly(out, fmt)
        written += on_partition(
            proxy, found, partition, core.export, cast(TextIO, target), fmt,
            since=since, until=until, raw_csv=raw_csv, where=where,
        )  # fmt: skip
        target.flush()
    return written


class _OnceOnly(io.TextIOBase):
    """Writes through to ``out`` what the first partition's export has already written
    only once: the CSV header line; beancount's title option, the chart's accounts and the
    commodities."""

    def __init__(self, out: TextIO, fmt: str) -> None:
        self.out = out
        self.fmt = fmt
        self.header_left = fmt == "csv"
        self.pending = ""

    def write(self, text: str) -> int:
        if self.fmt not in ("csv", "beancount"):
            return self.out.write(text)
        self.pending += text
        lines = self.pending.split("\n")
        self.pending = lines.pop()
        for line in lines:
            self._line(line + "\n")
        return len(text)

    def _line(self, line: str) -> None:
        from walletctl.core.export import CHART_OF_ACCOUNTS

        if self.header_left:  # csv: a header has no line break inside a quoted value
            self.header_left = False
            return
        if self.fmt == "beancount" and (
            line.startswith(('option "title"', "1970-01-01 commodity "))
            or line in {f"1970-01-01 open {account}\n" for account in CHART_OF_ACCOUNTS}
        ):
            return
        self.out.write(line)

    def flush(self) -> None:
        if self.pending:
            self.out.write(self.pending)
            self.pending = ""
        self.out.flush()
