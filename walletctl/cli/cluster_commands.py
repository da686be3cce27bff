"""cluster create|move|status: a ledger sharded by user over PostgreSQL servers with
PL/Proxy (README "Beyond one machine")."""

from __future__ import annotations

from typing import Annotated

import typer

from walletctl.cli import views
from walletctl.cli.app import state
from walletctl.cli.exit_codes import ExitCode
from walletctl.cli.formats import prints
from walletctl.cli.groups import ADMIN, command, group
from walletctl.cli.output import Listing, Output, Record

cluster_app = group(
    "cluster",
    "A ledger sharded by user: a PL/Proxy proxy database in front of partition databases.",
    panel=ADMIN,
)


@command(
    "create",
    "Set up (or check again) a cluster, idempotently: migrate each partition, number "
    "its transaction ids by its position, install PL/Proxy and walletctl's functions and "
    "roles in the proxy, and point the proxy at the partitions. A superuser's URLs; the "
    "number of partitions is a power of two and never changes.",
    on=cluster_app,
)
@prints()
def cluster_create(
    ctx: typer.Context,
    out: Output,
    proxy: Annotated[
        str, typer.Option("--proxy", help="The proxy database's URL.", show_default=False)
    ],
    partitions: Annotated[
        str | None,
        typer.Option(
            "--partitions",
            help="The partition databases' URLs, comma-separated, in partition order (a "
            "connection string that holds a comma, such as host=a,b: use --partition).",
            show_default=False,
        ),
    ] = None,
    partition: Annotated[
        list[str] | None,
        typer.Option(
            "--partition",
            help="One partition database's connection string, taken as written; repeat it, "
            "in partition order.",
            show_default=False,
        ),
    ] = None,
) -> None:
    from walletctl.cluster import admin
    from walletctl.errors import InvalidInput

    if (partitions is None) == (not partition):
        raise InvalidInput(
            "give the partitions either as --partitions A,B,... or as --partition A "
            "--partition B ..."
        )
    urls = (
        [url.strip() for url in partitions.split(",") if url.strip()]
        if partitions is not None
        else list(partition or [])
    )
    created = admin.create(proxy, urls)
    out.listing(
        Listing(
            [views.partition(p) for p in created.partitions],
            views.PARTITION_COLUMNS[:2],
            title="Cluster partitions",
            name="partitions",
        )
    )
    out.env.message(f"cluster ready: {created.count} partition(s) behind the proxy")


@command(
    "move",
    "Point the proxy (--database-url, as a superuser) at a copy of one partition on "
    "another server, after checking it is that partition at this walletctl's schema.",
    exits=(ExitCode.NOT_FOUND,),
    on=cluster_app,
)
@prints()
def cluster_move(
    ctx: typer.Context,
    out: Output,
    partition: Annotated[int, typer.Argument(help="The partition's number.", min=0)],
    to: Annotated[
        str, typer.Option("--to", help="The copy's URL (a superuser's).", show_default=False)
    ],
) -> None:
    from walletctl import database
    from walletctl.cluster import admin

    proxy_url = database.target_url(state(ctx).target())
    moved = admin.move(proxy_url, partition, to)
    out.env.message(f"partition {moved.number} is now {moved.connstr}")
    out.committed(Record(views.partition(moved), title="Partition moved"))


@command(
    "status",
    "The proxy's partitions: where, reachable or not, schema revision, size, users and "
    "transactions. Exit 6 if any partition cannot be reached or is not at this walletctl's "
    "schema.",
    on=cluster_app,
)
@prints()
def cluster_status(ctx: typer.Context, out: Output) -> None:
    from walletctl.cluster import admin

    with state(ctx).connection() as conn:
        found = admin.status(conn)
    out.listing(
        Listing(
            [views.partition_status(status) for status in found],
            views.PARTITION_COLUMNS,
            title="Cluster partitions",
            name="partitions",
        )
    )
    troubled = [status for status in found if status.problem]
    if troubled:
        out.env.message(
            "cluster: "
            + "; ".join(f"partition {status.number}: {status.problem}" for status in troubled)
        )
        raise typer.Exit(ExitCode.DATABASE_UNAVAILABLE)
