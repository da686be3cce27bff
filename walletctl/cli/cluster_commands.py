"""cluster create|move|status: a ledger sharded by user over PostgreSQL servers with
PL/Proxy (README "Beyond one machine")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from walletctl.cli import options, output
from walletctl.cli.app import app, state
from walletctl.cli.exit_codes import ExitCode

if TYPE_CHECKING:
    from walletctl.cluster.admin import PartitionStatus
    from walletctl.cluster.topology import Partition
    from walletctl.core.checkpoints import Checkpoint

cluster_app = typer.Typer(
    help="A ledger sharded by user: a PL/Proxy proxy database in front of partition databases."
)
app.add_typer(cluster_app, name="cluster")

Column = output.Column
PARTITION_COLUMNS = (
    Column("partition", "Partition", numeric=True),
    Column("connstr", "Where"),
    Column("reachable", "Reachable"),
    Column("schema_revision", "Schema"),
    Column("size_bytes", "Size (bytes)", numeric=True),
    Column("users", "Users", numeric=True),
    Column("transactions", "Transactions", numeric=True),
    Column("problem", "Problem"),
)


@cluster_app.command(
    "create",
    help="Set up (or check again) a cluster, idempotently: migrate each partition, number "
    "its transaction ids by its position, install PL/Proxy and walletctl's functions and "
    "roles in the proxy, and point the proxy at the partitions. A superuser's URLs; the "
    "number of partitions is a power of two and never changes.",
)
def cluster_create(
    proxy: Annotated[
        str, typer.Option("--proxy", help="The proxy database's URL.", show_default=False)
    ],
    partitions: Annotated[
        str,
        typer.Option(
            "--partitions",
            help="The partition databases' URLs, comma-separated, in partition order.",
            show_default=False,
        ),
    ],
    json_output: options.JsonOption = False,
) -> None:
    from walletctl.cluster import admin

    urls = [url.strip() for url in partitions.split(",") if url.strip()]
    created = admin.create(proxy, urls)
    out = output.Output(output.choose_mode(json_output=json_output))
    rows = [{"partition": p.number, "connstr": p.connstr} for p in created.partitions]
    out.table(rows, PARTITION_COLUMNS[:2], title="Cluster partitions")
    output.message(f"cluster ready: {created.count} partition(s) behind the proxy")


@cluster_app.command(
    "move",
    help="Point the proxy (--database-url, as a superuser) at a copy of one partition on "
    "another server, after checking it is that partition at this walletctl's schema.",
)
def cluster_move(
    ctx: typer.Context,
    partition: Annotated[int, typer.Argument(help="The partition's number.", min=0)],
    to: Annotated[
        str, typer.Option("--to", help="The copy's URL (a superuser's).", show_default=False)
    ],
) -> None:
    from walletctl import database
    from walletctl.cluster import admin

    proxy_url = database.target_url(state(ctx).target())
    moved = admin.move(proxy_url, partition, to)
    output.message(f"partition {moved.number} is now {moved.connstr}")


@cluster_app.command(
    "status",
    help="The proxy's partitions: where, reachable or not, schema revision, size, users and "
    "transactions. Exit 6 if any partition cannot be reached or is not at this walletctl's "
    "schema.",
)
def cluster_status(ctx: typer.Context, json_output: options.JsonOption = False) -> None:
    from walletctl.cluster import admin

    out = output.Output(output.choose_mode(json_output=json_output))
    with state(ctx).connection() as conn:
        found = admin.status(conn)
    rows = [_status_row(status) for status in found]
    if json_output:
        out.record({"partitions": rows}, title="cluster")
    else:
        out.table(rows, PARTITION_COLUMNS, title="Cluster partitions")
    troubled = [status for status in found if status.problem]
    if troubled:
        output.message(
            "cluster: "
            + "; ".join(f"partition {status.number}: {status.problem}" for status in troubled)
        )
        raise typer.Exit(ExitCode.DATABASE_UNAVAILABLE)


def _status_row(status: PartitionStatus) -> dict[str, Any]:
    return {
        "partition": status.number,
        "connstr": status.connstr,
        "reachable": status.reachable,
        "schema_revision": status.schema_revision,
        "size_bytes": status.size_bytes,
        "users": status.users,
        "transactions": status.transactions,
        "problem": status.problem,
    }


SEAL_COLUMNS = (
    Column("partition", "Partition"),
    Column("checkpoint", "Checkpoint", numeric=True),
    Column("sealed_after", "Sealed after", numeric=True),
    Column("sealed_through", "Sealed through", numeric=True),
    Column("transactions", "Transactions", numeric=True),
    Column("hash", "Hash"),
)


def show_partition_seals(
    out: output.Output, sealed: list[tuple[Partition, Checkpoint | None]]
) -> None:
    """`walletctl seal` through a proxy: each partition's new checkpoint (or none)."""
    rows = [
        {
            "partition": partition.label,
            "checkpoint": checkpoint.id if checkpoint else None,
            "sealed_after": checkpoint.previous_horizon if checkpoint else None,
            "sealed_through": checkpoint.horizon if checkpoint else None,
            "transactions": checkpoint.transactions if checkpoint else 0,
            "hash": checkpoint.hash.hex() if checkpoint else None,
        }
        for partition, checkpoint in sealed
    ]
    out.table(rows, SEAL_COLUMNS, title="Sealed, per partition")
    output.message(
        "sealed each partition; keep each partition's hash outside the database to prove it later"
    )
