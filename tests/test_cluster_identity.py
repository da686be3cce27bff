"""How the partitions are reached: behind the proxy, as the role that logged in to it
(PL/Proxy would connect as the role switched to with SET ROLE, and the partitions would
record that role as the actor: the proxy refuses calls made under another role than the
login); by walletctl directly, without server-side prepares when a pooler is in between."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from walletctl.cluster import admin
from walletctl.cluster.admin import partition_connstr
from walletctl.cluster.topology import Partition, connect_partition, topology

from .cli_helpers import Cli
from .conftest import ClusterUrls, create_login_role, drop_login_role, owned_by_a_login, with_user
from .servers import PgBouncer


@pytest.fixture
def clerk_and_reader(server_url: str) -> Iterator[tuple[str, str]]:
    """An operator login, and a finance login that is a member of it (so holds its
    privileges and may SET ROLE to it, as a login in several of an organisation's groups
    may)."""
    suffix = uuid.uuid4().hex[:8]
    clerk, reader = f"walletctl_test_clerk_{suffix}", f"walletctl_test_reader_{suffix}"
    create_login_role(server_url, clerk, "operator", "finance")
    create_login_role(server_url, reader, "finance")
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'GRANT "{clerk}" TO "{reader}"')
    yield clerk, reader
    drop_login_role(server_url, reader)
    drop_login_role(server_url, clerk)


def test_set_role_on_the_proxy_does_not_change_who_posts_on_the_partitions(
    clean_cluster: ClusterUrls, clerk_and_reader: tuple[str, str]
) -> None:
    clerk, reader = clerk_and_reader
    with psycopg.connect(with_user(clean_cluster.proxy, clerk), autocommit=True) as conn:
        conn.execute("SELECT walletctl_add_asset('GOLD', 'Gold Coins')")
        receipt = conn.execute(
            "SELECT (r).actor FROM walletctl_post('topup', 'alice', 'GOLD', 10, 'by-clerk',"
            " 'bought', NULL) AS r"
        ).fetchone()
    assert receipt == (clerk,)

    with psycopg.connect(with_user(clean_cluster.proxy, reader), autocommit=True) as conn:
        conn.execute(f'SET ROLE "{clerk}"')
        for call in (
            "SELECT walletctl_post('topup', 'alice', 'GOLD', 7, 'as-clerk', 'bought', NULL)",
            "SELECT * FROM walletctl_balances('alice')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="SET ROLE"):
                conn.execute(call)
        conn.execute("RESET ROLE")  # as itself, it acts as itself (with what it holds)
        receipt = conn.execute(
            "SELECT (r).actor FROM walletctl_post('topup', 'alice', 'GOLD', 7, 'as-reader',"
            " 'bought', NULL) AS r"
        ).fetchone()
    assert receipt == (reader,)
    posted = []
    for url in clean_cluster.partitions:
        with psycopg.connect(url) as partition:
            posted += partition.execute(
                "SELECT idempotency_key, actor FROM transactions ORDER BY id"
            ).fetchall()
    assert sorted(posted) == [("as-reader", reader), ("by-clerk", clerk)]


def test_a_partition_reached_through_pgbouncer_gets_no_server_side_prepares(
    clean_cluster: ClusterUrls, ops_role: str, pgbouncer: PgBouncer
) -> None:
    """PL/Proxy's own advice puts a PgBouncer in front of each partition; walletctl's direct
    connections to a partition (reconcile, seal, export over a cluster) then must not
    prepare statements on the server, as its connections to a ledger do not."""
    with psycopg.connect(with_user(clean_cluster.proxy, ops_role), autocommit=True) as proxy:
        found = topology(proxy)
        assert found is not None
        first = found.partitions[0]
        routed = Partition(
            first.number, partition_connstr(pgbouncer.route(clean_cluster.partitions[0]))
        )
        with connect_partition(proxy, found, routed) as through:
            assert through.prepare_threshold is None
        with connect_partition(proxy, found, first) as direct:
            assert direct.prepare_threshold == 5


def test_whoever_owns_the_proxy_database_cannot_plant_a_function_and_an_overload_is_drift(
    clean_cluster: ClusterUrls, server_url: str, ops_role: str
) -> None:
    """On PostgreSQL 15 the schema public belongs to the database's owner: a login owning
    the proxy database could add an overload of walletctl_post (an integer amount, which a
    call with a literal resolves to) that runs as every caller. public belongs to
    walletctl_owner on the proxy, and a function walletctl does not define there (put by a
    superuser) stops every command through the proxy, as drift."""
    planted = (
        "CREATE FUNCTION public.walletctl_post(text, text, text, integer, text, text,"
        " text DEFAULT NULL) RETURNS walletctl_receipt LANGUAGE sql AS"
        " $$ SELECT NULL::walletctl_receipt $$"
    )
    with owned_by_a_login(server_url, clean_cluster.proxy) as owner:
        with psycopg.connect(with_user(clean_cluster.proxy, owner), autocommit=True) as conn:
            row = conn.execute(
                "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public'"
            ).fetchone()
            assert row == ("walletctl_owner",)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(planted)
        with psycopg.connect(clean_cluster.proxy, autocommit=True) as superuser:
            superuser.execute(planted)
            try:
                refused = Cli(with_user(clean_cluster.proxy, ops_role))("balance", "alice")
                assert refused.exit_code == 6, refused.output
                assert "walletctl cluster create" in refused.stderr
            finally:
                superuser.execute(
                    "DROP FUNCTION public.walletctl_post(text, text, text, integer, text, text,"
                    " text)"
                )


def test_partitions_given_one_by_one_are_taken_as_written_commas_and_all(
    clean_cluster: ClusterUrls, ops_role: str
) -> None:
    """--partitions splits at commas, so a libpq string that holds one (several hosts:
    host=a,b) cannot go there; --partition takes one as written, repeated in order."""
    admin_cli = Cli(clean_cluster.proxy)
    multi_host = []
    for url in clean_cluster.partitions:
        params = conninfo_to_dict(url)
        host, port = params.get("host", "127.0.0.1"), params.get("port", "5432")
        multi_host.append(
            f"host={host},{host} port={port},{port} dbname={params['dbname']} user=postgres"
        )
    given = [arg for url in multi_host for arg in ("--partition", url)]
    try:
        created = admin_cli("cluster", "create", "--proxy", clean_cluster.proxy, *given)
        assert created.exit_code == 0, created.output
        with psycopg.connect(clean_cluster.proxy) as conn:
            stored = [
                row[0] for row in conn.execute("SELECT plproxy.get_cluster_partitions('walletctl')")
            ]
        assert all(f"{host},{host}" in text and "user" not in text for text in stored)
        ops = Cli(with_user(clean_cluster.proxy, ops_role))
        assert ops("asset", "add", "GOLD", "Gold Coins").exit_code == 0
        assert ops("topup", "alice", "5").exit_code == 0
        assert ops("balance", "alice", "--json").exit_code == 0
        both = admin_cli(
            "cluster", "create", "--proxy", clean_cluster.proxy,
            "--partitions", ",".join(clean_cluster.partitions), *given,
        )  # fmt: skip
        neither = admin_cli("cluster", "create", "--proxy", clean_cluster.proxy)
        for refused in (both, neither):
            assert refused.exit_code == 2 and "--partition A --partition B" in refused.stderr
    finally:
        admin.create(clean_cluster.proxy, clean_cluster.partitions)


def test_functions_planted_on_the_proxys_search_path_never_run_in_its_functions(
    clean_cluster: ClusterUrls, server_url: str, ops_role: str
) -> None:
    """The proxy's functions run RUN ON hashtext(...) and an operator in the caller's
    session: with their search_path pinned, a hashtext or & planted by the proxy
    database's owner in a schema the caller's search_path reaches first is never called
    (a raw SQL caller's session, which walletctl's own check does not guard)."""
    with owned_by_a_login(server_url, clean_cluster.proxy) as owner:
        with psycopg.connect(with_user(clean_cluster.proxy, owner), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA planted")
            conn.execute("GRANT USAGE ON SCHEMA planted TO PUBLIC")
            conn.execute(
                "CREATE FUNCTION planted.hashtext(text) RETURNS integer LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'planted hashtext ran'; END $$"
            )
            conn.execute(
                "CREATE FUNCTION planted.bitand(bigint, integer) RETURNS bigint LANGUAGE plpgsql"
                " AS $$ BEGIN RAISE EXCEPTION 'planted operator ran'; END $$"
            )
            conn.execute(
                "CREATE OPERATOR planted.& (LEFTARG = bigint, RIGHTARG = integer,"
                " FUNCTION = planted.bitand)"
            )
        with psycopg.connect(with_user(clean_cluster.proxy, ops_role), autocommit=True) as caller:
            caller.execute("SET search_path = planted, pg_catalog, public")
            caller.execute("SELECT walletctl_add_asset('GOLD', 'Gold Coins')")
            receipt = caller.execute(
                "SELECT (r).transaction_id FROM walletctl_post('topup', 'alice', 'GOLD', 5,"
                " 'k1', 'bought', NULL) AS r"
            ).fetchone()
            assert receipt is not None
            reversal = caller.execute(
                "SELECT (r).reverses FROM walletctl_reverse(%s, 'k2', 'mistake', NULL) AS r",
                (receipt[0],),
            ).fetchone()
            assert reversal == receipt
        shown = Cli(with_user(clean_cluster.proxy, ops_role))("balance", "alice")
        assert shown.exit_code == 0  # planted is not on the login's own search_path
