"""reconcile over a cluster: every partition's report merged into one, with the check only
a cluster has: each partition holds only its own users and transaction ids.

Users are placed by PL/Proxy's hash (hashtext(user) & (N - 1)); the partition computes the
same hash (the same PostgreSQL major version everywhere, which a cluster needs anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

from walletctl.cluster.topology import Partition, Topology, partition_identity
from walletctl.core.models import Connection
from walletctl.core.reconcile import CheckResult, ReconcileReport
from walletctl.core.sqlerrors import translated

PLACEMENT = "partition_placement"

Misplaced = tuple[int, int, int, int]
"""(users checked, users on the wrong partition, transactions checked, misplaced ids)."""


def misplaced(conn: Connection, count: int) -> Misplaced:
    increment, start = partition_identity(conn)
    number = start % count
    with translated():
        row = conn.execute(
            "SELECT (SELECT count(*) FROM accounts WHERE external_id IS NOT NULL), "
            "(SELECT count(*) FROM accounts a WHERE a.external_id IS NOT NULL "
            " AND hashtext(a.external_id) & (%(n)s - 1) <> %(p)s), "
            "(SELECT count(*) FROM transactions), "
            "(SELECT count(*) FROM transactions t WHERE t.id %% %(n)s <> %(p)s)",
            {"n": count, "p": number},
        ).fetchone()
    assert row is not None
    users, wrong_users, transactions, wrong_ids = (int(value) for value in row)
    if increment != count:  # ids that do not say their partition: every one misplaced
        wrong_ids = transactions
    return users, wrong_users, transactions, wrong_ids


def merge_reports(
    found: Topology, reports: Sequence[tuple[Partition, tuple[ReconcileReport, Misplaced]]]
) -> ReconcileReport:
    """One check per name, its counts added up and its examples named by partition; the
    placement check; notes named by partition."""
    merged: dict[str, CheckResult] = {}
    examples: dict[str, list[str]] = {}
    notes: list[str] = []
    placement_checked = placement_failures = 0
    placement_examples: list[str] = []
    for partition, (report, (users, wrong_users, txns, wrong_ids)) in reports:
        for check in report.checks:
            before = merged.get(check.name)
            merged[check.name] = CheckResult(
                check.name,
                check.description,
                check.checked + (before.checked if before else 0),
                check.failures + (before.failures if before else 0),
            )
            examples.setdefault(check.name, []).extend(
                f"{partition.label}: {example}" for example in check.examples
            )
            if check.failures and not check.examples:
                examples[check.name].append(f"{partition.label}: {check.failures} failure(s)")
        notes.extend(f"{partition.label}: {note}" for note in report.notes)
        placement_checked += users + txns
        placement_failures += wrong_users + wrong_ids
        if wrong_users or wrong_ids:
            placement_examples.append(
                f"{partition.label}: {wrong_users} user(s), {wrong_ids} transaction id(s) of "
                "other partitions"
            )
    checks = [
        CheckResult(
            check.name,
            check.description,
            check.checked,
            check.failures,
            tuple(examples[check.name][:5]),
        )
        for check in merged.values()
    ]
    checks.append(
        CheckResult(
            PLACEMENT,
            "every user and transaction id is on the partition the proxy routes it to",
            placement_checked,
            placement_failures,
            tuple(placement_examples[:5]),
        )
    )
    modes = {report.mode for _p, (report, _m) in reports}
    methods = {report.method for _p, (report, _m) in reports}
    return ReconcileReport(
        checks=tuple(checks),
        mode="full" if "full" in modes else "incremental",
        horizon=min((report.horizon for _p, (report, _m) in reports), default=0),
        method="exact" if "exact" in methods else "fingerprint",
        notes=tuple(notes),
    )
