"""What the placement rule (migration 0008, WL024) costs a posting: the accounts trigger on
and off, in one run.

    python -m bench.placement [--postings 2000] [--rounds 3] [--batch 1000]

Two databases migrated to head: one numbered as partition 1 of 2 (as `walletctl cluster
create` numbers it), one that is no partition. On each, one client (a login role that is
only a walletctl_operator and walletctl_batch) sends prepared walletctl_post calls:

- new: a first credit of a user of that partition, so the posting creates the user and
  the trigger fires (the only single posting that reaches it);
- existing: a top-up of a funded user (the trigger does not fire: the control);
- batch: walletctl_post_batch of --batch first credits (the trigger fires per user; the
  batch's own check of the row, a hash, stays on when the trigger is off).

"on" and "off" (ALTER TABLE accounts DISABLE TRIGGER accounts_placement) alternate within
each round; the median round of each is reported, with the server backend's CPU time per
posting (bench/server_cpu.py), which the client cannot distort.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import psycopg

from bench.common import markdown_table, median, print_table, scratch_database
from bench.posting import OPERATOR_ROLE, as_operator
from bench.server_cpu import backend_cpu_seconds
from walletctl import migrate
from walletctl.cluster.admin import number_partition
from walletctl.cluster.topology import Partition

FUNDED = 2_000
POST_SQL = "SELECT * FROM walletctl_post('topup', %s, 'GOLD', 10, %s, NULL)"
BATCH_SQL = (
    "SELECT count(*) FROM walletctl_post_batch('topup', NULL, %s, %s, %s, %s, %s, %s, false)"
)


def prepare(url: str, *, partition: bool) -> None:
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        if partition:
            number_partition(conn, Partition(1, "dbname=bench"), 2)
        conn.execute("SELECT walletctl_add_asset('GOLD', 'Gold Coins')")
        if not conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (OPERATOR_ROLE,)
        ).fetchone():
            conn.execute(f"CREATE ROLE {OPERATOR_ROLE} LOGIN")
        conn.execute(f"GRANT walletctl_operator, walletctl_batch TO {OPERATOR_ROLE}")
        conn.execute(
            "SELECT walletctl_post('topup', u, 'GOLD', 1000000, 'fund-' || u, NULL) "
            "FROM (SELECT 'funded-' || g AS u FROM generate_series(1, %s) g) x "
            "WHERE hashtext(u) & 1 = 1 OR NOT %s",
            (FUNDED * 2, partition),
        )
        conn.execute("VACUUM ANALYZE")


def users_of_partition(conn: psycopg.Connection[Any], prefix: str, count: int) -> list[str]:
    """``count`` fresh user ids that partition 1 of 2 holds (valid anywhere else too)."""
    rows = conn.execute(
        "SELECT u FROM (SELECT %s || g AS u FROM generate_series(1, %s) g) x "
        "WHERE hashtext(u) & 1 = 1 LIMIT %s",
        (prefix, count * 4, count),
    ).fetchall()
    return [row[0] for row in rows]


def set_trigger(url: str, on: bool) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"ALTER TABLE accounts {'ENABLE' if on else 'DISABLE'} TRIGGER accounts_placement"
        )


def run(
    conn: psycopg.Connection[Any], workload: str, tag: str, postings: int, batch: int
) -> tuple[float, float]:
    """(postings per second, server CPU µs per posting)."""
    if workload == "existing":
        funded = [
            row[0]
            for row in conn.execute(
                "SELECT external_id FROM accounts WHERE external_id LIKE 'funded-%%'"
            ).fetchall()
        ]
        users = [funded[n % len(funded)] for n in range(postings)]
    else:
        users = users_of_partition(conn, f"{tag}-", postings)
    cpu = backend_cpu_seconds(conn)
    start = time.perf_counter()
    if workload == "batch":
        for first in range(0, postings, batch):
            chunk = users[first : first + batch]
            conn.execute(
                BATCH_SQL,
                (
                    list(range(1, len(chunk) + 1)),
                    chunk,
                    ["GOLD"] * len(chunk),
                    [10] * len(chunk),
                    [f"{tag}-k{first + n}" for n in range(len(chunk))],
                    [None] * len(chunk),
                ),
            )
    else:
        for n, user in enumerate(users):
            conn.execute(POST_SQL, (user, f"{tag}-k{n}"), prepare=True)
    elapsed = time.perf_counter() - start
    cpu = backend_cpu_seconds(conn) - cpu
    return postings / elapsed, cpu / postings * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postings", type=int, default=2000, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000, help="rows per batch")
    args = parser.parse_args()
    results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    with scratch_database() as partition_url, scratch_database() as plain_url:
        prepare(partition_url, partition=True)
        prepare(plain_url, partition=False)
        for round_number in range(args.rounds):
            for database, url in (("partition 1 of 2", partition_url), ("no partition", plain_url)):
                for workload in ("new", "existing", "batch"):
                    for state in ("on", "off") if round_number % 2 == 0 else ("off", "on"):
                        set_trigger(url, state == "on")
                        tag = f"r{round_number}-{workload}-{state}"
                        with psycopg.connect(as_operator(url), autocommit=True) as conn:
                            measured = run(conn, workload, tag, args.postings, args.batch)
                        results.setdefault((database, workload, state), []).append(measured)
            set_trigger(partition_url, True)
            set_trigger(plain_url, True)
    rows = []
    for (database, workload, state), measured in results.items():
        if state != "on":
            continue
        off = results[(database, workload, "off")]
        rate_on, rate_off = median([m[0] for m in measured]), median([m[0] for m in off])
        cpu_on, cpu_off = median([m[1] for m in measured]), median([m[1] for m in off])
        rows.append(
            (
                database,
                workload,
                f"{rate_off:,.0f}",
                f"{rate_on:,.0f}",
                f"{rate_on / rate_off:.2f}x",
                f"{cpu_off:.0f}",
                f"{cpu_on:.0f}",
                f"{cpu_on - cpu_off:+.0f}",
            )
        )
    columns = (
        "database",
        "workload",
        "postings/s off",
        "postings/s on",
        "on/off",
        "server CPU us off",
        "server CPU us on",
        "difference us",
    )
    print_table(
        f"Placement trigger on vs off ({args.postings:,} postings per measurement, median of "
        f"{args.rounds} rounds, 1 client)",
        columns,
        rows,
    )
    print(markdown_table(columns, rows))


if __name__ == "__main__":
    main()
