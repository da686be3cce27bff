"""The core's reads on a cluster, run on the partitions and combined (the whole-ledger
procedures are in walletctl/cluster/procedures.py).

Each function here has the name given to ``@on_proxy`` by a core function, and that core
function's arguments after the proxy's topology. A read of one user or one transaction runs
the core function on the one partition that holds it; a global read runs it on every
partition in turn (as the role logged in to the proxy) and adds up, or merges, the results;
the Treasury's side comes from the proxy's own RUN ON ALL function. A failure names its
partition.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import fields, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg.rows import class_row

from walletctl.cluster.topology import (
    Partition,
    Topology,
    connect_partition,
    user_partition,
)
from walletctl.core import validation
from walletctl.core.models import (
    Balance,
    Connection,
    Outstanding,
    StatementLine,
    StatementTotal,
    TransactionDetail,
)
from walletctl.core.sqlerrors import translated
from walletctl.errors import IdempotencyConflict, InvalidInput

if TYPE_CHECKING:
    from walletctl.core.bulk import ParsedFile
    from walletctl.core.history import StatementFilter
    from walletctl.core.models import UserSummary
    from walletctl.core.policy import Budget, CreditRequest, Freeze
    from walletctl.core.summary import ActorTotal, PeriodSummary, ReportFilter

T = TypeVar("T")


def on_partition(
    proxy: Connection,
    found: Topology,
    partition: Partition,
    function: Callable[..., T],
    *args: Any,
    **kwargs: Any,
) -> T:
    """``function`` on one partition. A result that is an iterator keeps the partition's
    connection open until it is exhausted (or closed)."""
    stack = ExitStack()
    try:
        conn = stack.enter_context(connect_partition(proxy, found, partition))
        result = function(conn, *args, **kwargs)
    except BaseException:
        stack.close()
        raise
    if isinstance(result, Iterator):
        return _closing(result, stack)  # type: ignore[return-value]
    stack.close()
    return result


def _closing(rows: Iterator[T], stack: ExitStack) -> Iterator[T]:
    with stack:
        yield from rows


def on_every_partition(
    proxy: Connection, found: Topology, function: Callable[..., T], *args: Any, **kwargs: Any
) -> list[tuple[Partition, T]]:
    """``function`` on every partition, in partition order; an error names its partition."""
    return [
        (partition, on_partition(proxy, found, partition, function, *args, **kwargs))
        for partition in found.partitions
    ]


def _on_user(
    proxy: Connection,
    found: Topology,
    user_id: str,
    function: Callable[..., T],
    *args: Any,
    **kwargs: Any,
) -> T:
    partition = user_partition(proxy, found, validation.user_id(user_id))
    return on_partition(proxy, found, partition, function, user_id, *args, **kwargs)


# Postings -----------------------------------------------------------------------------


def scope(proxy: Connection, found: Topology, *, dry_run: bool) -> AbstractContextManager[object]:
    """A dry run rolls back the proxy's transaction, but PL/Proxy has committed the posting
    on its partition already: refused, rather than a dry run that writes."""
    if dry_run:
        raise InvalidInput(
            "--dry-run does not work through a PL/Proxy proxy (each partition commits the "
            "call on its own, so rolling back would not undo it); run the dry run against "
            "the user's partition (walletctl cluster status lists them)"
        )
    return nullcontext()


def binding_budgets(proxy: Connection, found: Topology, asset: str) -> list[Budget]:
    """Issuance budgets are kept, and charged, per partition: the proxy shows none."""
    return []


def operator_controls(proxy: Connection, found: Topology, *_: Any, **__: Any) -> Any:
    """Thresholds, budgets, freezes and requests live in each partition (README "Beyond
    one machine"): not routed through the proxy."""
    raise InvalidInput(
        "the operator controls (policy, request, user freeze) do not work through a proxy: "
        "they are kept per partition; run the command against each partition (walletctl "
        "cluster status lists them)"
    )


# One user, one transaction ------------------------------------------------------------


def balances(
    proxy: Connection,
    found: Topology,
    user_id: str,
    *,
    asset: str | None = None,
    as_of: datetime | None = None,
) -> list[Balance]:
    from walletctl.core import balances as core

    return _on_user(proxy, found, user_id, core.balances, asset=asset, as_of=as_of)


def current_freeze(proxy: Connection, found: Topology, user_id: str) -> Freeze | None:
    from walletctl.core import policy

    return _on_user(proxy, found, user_id, policy.current_freeze)


def statement(
    proxy: Connection, found: Topology, user_id: str, where: StatementFilter | None = None
) -> Iterator[StatementLine]:
    from walletctl.core import history

    return _on_user(proxy, found, user_id, history.statement, where)


def statement_totals(
    proxy: Connection, found: Topology, user_id: str, where: StatementFilter | None = None
) -> list[StatementTotal]:
    from walletctl.core import history

    return _on_user(proxy, found, user_id, history.statement_totals, where)


def show_user(proxy: Connection, found: Topology, user_id: str) -> UserSummary:
    from walletctl.core import users

    return _on_user(proxy, found, user_id, users.show_user)


def transaction(proxy: Connection, found: Topology, transaction_id: int) -> TransactionDetail:
    """On the partition the id names (ids are the partition's number modulo their count)."""
    from walletctl.core import history

    partition = found.of_transaction(validation.transaction_id(transaction_id))
    return on_partition(proxy, found, partition, history.transaction, transaction_id)


def transaction_by_key(
    proxy: Connection, found: Topology, idempotency_key: str
) -> TransactionDetail | None:
    """What a key posted, looked up on every partition. Keys are unique per user (each
    user's postings are on one partition); the same key used for users on two partitions
    posted twice, and is reported as the conflict it is."""
    from walletctl.core import history

    posted = [
        (partition, detail)
        for partition, detail in on_every_partition(
            proxy, found, history.transaction_by_key, idempotency_key
        )
        if detail is not None
    ]
    if len(posted) > 1:
        held = ", ".join(
            f"transaction {detail.transaction_id} of {detail.user_id} on {partition.label}"
            for partition, detail in posted
        )
        raise IdempotencyConflict(
            f"idempotency key {idempotency_key} was used for users on different partitions: "
            f"{held}; audit each with --txn",
            transaction_id=posted[0][1].transaction_id,
        )
    return posted[0][1] if posted else None


def request_by_key(
    proxy: Connection, found: Topology, idempotency_key: str
) -> CreditRequest | None:
    from walletctl.core import policy

    for _partition, request in on_every_partition(
        proxy, found, policy.request_by_key, idempotency_key
    ):
        if request is not None:
            return request
    return None


# Global reads -------------------------------------------------------------------------


def outstanding(proxy: Connection, found: Topology) -> list[Outstanding]:
    """The proxy's walletctl_outstanding() (RUN ON ALL: a row per partition and asset),
    added up: the cluster's Treasury is the sum of the partitions'."""
    with translated(), proxy.cursor(row_factory=class_row(Outstanding)) as cursor:
        rows = cursor.execute("SELECT * FROM walletctl_outstanding()").fetchall()
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in rows:
        total = totals[row.asset]
        total[0] += row.outstanding
        total[1] += row.holders
        total[2] += row.treasury_balance
    return [Outstanding(asset, *totals[asset]) for asset in sorted(totals)]


def period_summary(
    proxy: Connection,
    found: Topology,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    asset: str | None = None,
    where: ReportFilter | None = None,
) -> list[PeriodSummary]:
    """Every partition's summary, added up per asset (every column is a sum or a count;
    the outstanding columns are None on every partition or on none)."""
    from walletctl.core import summary

    totals: dict[str, PeriodSummary] = {}
    for _partition, rows in on_every_partition(
        proxy, found, summary.period_summary, since=since, until=until, asset=asset, where=where
    ):
        for row in rows:
            before = totals.get(row.asset)
            totals[row.asset] = (
                row
                if before is None
                else replace(
                    before,
                    **{  # type: ignore[arg-type]
                        f.name: _added(getattr(before, f.name), getattr(row, f.name))
                        for f in fields(row)
                        if f.name != "asset"
                    },
                )
            )
    return [totals[code] for code in sorted(totals)]


def _added(first: int | None, second: int | None) -> int | None:
    return None if first is None or second is None else first + second


def by_actor(
    proxy: Connection,
    found: Topology,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    asset: str | None = None,
    where: ReportFilter | None = None,
) -> list[ActorTotal]:
    """Every partition's totals per actor, asset and kind, added up."""
    from walletctl.core import summary

    totals: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for _partition, rows in on_every_partition(
        proxy, found, summary.by_actor, since=since, until=until, asset=asset, where=where
    ):
        for row in rows:
            total = totals[(row.actor, row.asset, row.kind)]
            total[0] += row.transactions
            total[1] += row.amount
    return [summary.ActorTotal(*key, *totals[key]) for key in sorted(totals)]


def list_assets(proxy: Connection, found: Topology) -> list[Any]:
    """Asset types are added on every partition at once (walletctl_add_asset RUN ON ALL):
    the ones every partition has."""
    from walletctl.core import assets

    listed = [
        found_assets for _p, found_assets in on_every_partition(proxy, found, assets.list_assets)
    ]
    codes = set.intersection(*({asset.code for asset in each} for each in listed))
    return [asset for asset in listed[0] if asset.code in codes]


def list_users(proxy: Connection, found: Topology, **_: Any) -> Iterator[UserSummary]:
    raise InvalidInput(
        "user list and balance --all do not work through a proxy yet; list each partition's "
        "users (walletctl cluster status lists them)"
    )


def count_users(proxy: Connection, found: Topology) -> int:
    """Through a proxy the user listings are refused (list_users) before they count."""
    list_users(proxy, found)
    return 0


# Bulk files ---------------------------------------------------------------------------


def check_against_ledger(
    proxy: Connection, found: Topology, kind: Any, parsed: ParsedFile
) -> ParsedFile:
    """The core's check of each partition's rows on that partition, merged."""
    from walletctl.core import bulk

    by_partition = _users_partitions(proxy, found, [row.user_id for row in parsed.rows])
    rows_of: dict[int, list[bulk.BulkRow]] = defaultdict(list)
    for row in parsed.rows:
        rows_of[by_partition[row.user_id]].append(row)
    kept: list[bulk.BulkRow] = []
    invalid = list(parsed.invalid)
    for number, rows in sorted(rows_of.items()):
        checked = on_partition(
            proxy,
            found,
            found.partitions[number],
            bulk.check_against_ledger,
            kind,
            bulk.ParsedFile(rows, [], parsed.digest),
        )
        kept.extend(checked.rows)
        invalid.extend(checked.invalid)
    kept.sort(key=lambda row: row.line)
    invalid.sort(key=lambda bad: bad.line)
    return bulk.ParsedFile(kept, invalid, parsed.digest)


def row_number_keys_in_use(proxy: Connection, found: Topology, prefix: str, rows: int) -> list[str]:
    from walletctl.core import bulk

    in_use = [
        key
        for _partition, keys in on_every_partition(
            proxy, found, bulk.row_number_keys_in_use, prefix, rows
        )
        for key in keys
    ]
    return in_use[:3]


def _users_partitions(proxy: Connection, found: Topology, users: list[str]) -> dict[str, int]:
    with translated():
        return dict(
            proxy.execute(
                "SELECT u, walletctl_user_partition(u) FROM unnest(%s::text[]) AS u",
                (sorted(set(users)),),
            ).fetchall()
        )
