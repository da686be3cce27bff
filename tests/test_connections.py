"""Connection strings the libpq way: every form passes through as written and connects;
the PG* variables and the service file are honoured, and name the server before the
embedded default does; a password is never printed, whatever the form."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from walletctl.config import Settings, resolve_target
from walletctl.errors import InvalidInput

from .cli_helpers import Cli

FORMS = [
    "postgresql:///wallet?host=/var/run/postgresql",
    "postgresql://?service=wallet",
    "postgresql://u@/wallet?host=/run/pg&port=5433",
    "postgres://u@h1:5432,h2:5433/wallet?target_session_attrs=read-write",
    "host=a,b port=5432,5433 dbname=wallet target_session_attrs=prefer-standby",
    "service=wallet",
    "dbname=wallet",
    "host='/run/my pg' dbname=wallet",
]


@pytest.mark.parametrize("form", FORMS)
def test_every_libpq_form_passes_through_untouched(form: str) -> None:
    target = resolve_target(form, Settings(config_path=Path(os.devnull)))
    assert target.url == form and target.source == "--database-url"


def _server(database_url: str) -> dict[str, str]:
    params = conninfo_to_dict(database_url)
    return {key: str(params[key]) for key in ("host", "port", "dbname", "user") if key in params}


def _no_embedded(tmp_path: Path) -> dict[str, str]:
    """An environment in which the embedded server could not start (its data folder would
    be under a regular file): a command that fell back to it would exit 6."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return {"WALLETCTL_DATABASE_URL": "", "WALLETCTL_DATA_DIR": str(blocker / "data")}


def test_key_value_and_multi_host_strings_connect(database_url: str) -> None:
    server = _server(database_url)
    forms = (
        " ".join(f"{key}={value}" for key, value in server.items()),
        # The first host refuses connections; libpq goes on to the next.
        f"host=127.0.0.1,{server['host']} port=1,{server['port']} dbname={server['dbname']} "
        f"user={server['user']} connect_timeout=5",
    )
    for form in forms:
        result = Cli(form)("db", "status", "--json")
        assert result.exit_code == 0, (form, result.stderr)
        assert json.loads(result.stdout)["schema_current"] is True


def test_the_pg_environment_names_the_server_before_the_embedded_default(
    database_url: str, tmp_path: Path
) -> None:
    server = _server(database_url)
    env = {
        **_no_embedded(tmp_path),
        "PGHOST": server["host"],
        "PGPORT": server["port"],
        "PGDATABASE": server["dbname"],
        "PGUSER": server["user"],
    }
    status = Cli("", env=env)("db", "status", "--json")
    assert status.exit_code == 0, status.stderr
    body = json.loads(status.stdout)
    assert body["source"] == "PG environment" and body["mode"] == "server"
    assert f"PGHOST={server['host']}" in body["why"]
    assert f"PGDATABASE={server['dbname']}" in body["why"]
    assert f"dbname={server['dbname']}" in body["connected_to"]
    assert body["schema_current"] is True
    assert Cli("", env=env)("asset", "list").exit_code == 0


def test_pgservice_and_the_users_service_file_are_honoured(
    database_url: str, tmp_path: Path
) -> None:
    server = _server(database_url)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".pg_service.conf").write_text(
        "[wallet]\n" + "".join(f"{key}={value}\n" for key, value in server.items())
    )
    env = {**_no_embedded(tmp_path), "HOME": str(home)}
    by_variable = Cli("", env={**env, "PGSERVICE": "wallet"})("db", "status", "--json")
    assert by_variable.exit_code == 0, by_variable.stderr
    assert json.loads(by_variable.stdout)["why"] == "PGSERVICE=wallet"
    for form in ("service=wallet", "postgresql://?service=wallet"):
        by_url = Cli(form, env={"HOME": str(home)})("asset", "list")
        assert by_url.exit_code == 0, (form, by_url.stderr)


def test_without_url_or_pg_variables_the_embedded_default_says_why(tmp_path: Path) -> None:
    status = Cli("", env={"WALLETCTL_DATA_DIR": str(tmp_path / "data")})("db", "status", "--json")
    assert status.exit_code == 0, status.stderr
    body = json.loads(status.stdout)
    assert body["source"] == "embedded" and body["running"] is False
    assert "no PG* variable naming a server" in body["why"]


SECRETS = ["hu/nt#er?2", "hunt@er2", "s3 cr'et"]


@pytest.mark.parametrize(
    "form",
    [
        "postgresql://postgres:hu/nt#er?2@127.0.0.1:1/nowhere",
        "postgresql://postgres:hunt@er2@127.0.0.1:1/nowhere",
        "postgresql://postgres:hu%2Fnt%23er%3F2@127.0.0.1:1/nowhere",
        "postgresql://postgres@127.0.0.1:1/nowhere?password=hu/nt%23er?2",
        "host=127.0.0.1 port=1 dbname=nowhere user=postgres password='s3 cr\\'et'",
        "host=127.0.0.1 port=1 dbname=nowhere password=hu/nt#er?2",
        "host=127.0.0.1 port=1 password='s3 cr\\'et",
        "postgresql://postgres:hunt@er2@127.0.0.1:99999/nowhere",
    ],
)
def test_no_password_is_ever_printed(form: str) -> None:
    elsewhere = "postgresql://postgres@127.0.0.1:1/elsewhere"
    for args in (
        ["--database-url", form, "balance", "alice"],
        ["--database-url", form, "db", "status"],
        ["--database-url", elsewhere, "--read-url", form, "balance", "alice"],
    ):
        result = Cli("")(*args)
        assert result.exit_code in (2, 6), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        shown = result.stderr + result.stdout
        for secret in SECRETS:
            for part in (secret, secret.replace("/", "%2F")):
                assert part not in shown, shown
        assert "***" in shown or "nowhere" in shown


def test_a_url_whose_password_libpq_would_misread_is_refused_with_the_fix() -> None:
    with pytest.raises(InvalidInput, match="percent-encode") as refused:
        resolve_target(
            "postgresql://u:pa/ss@db.internal/wallet", Settings(config_path=Path(os.devnull))
        )
    assert "pa/ss" not in str(refused.value) and "ss@" not in str(refused.value)


def test_a_stray_pghostaddr_cannot_send_a_url_to_another_server(database_url: str) -> None:
    """libpq would connect to PGHOSTADDR whatever the URL's host says: refused, nothing run;
    a URL that names its own address, or the PG environment alone, still connects."""
    elsewhere = Cli(database_url, env={"PGHOSTADDR": "127.0.0.2"})
    refused = elsewhere("asset", "list", "--format", "tsv")
    assert refused.exit_code == 2, refused.output
    assert "PGHOSTADDR=127.0.0.2" in refused.stderr and refused.stderr.count("\n") == 1
    params = conninfo_to_dict(database_url)
    addressed = f"{database_url}{'&' if '?' in database_url else '?'}hostaddr=127.0.0.1"
    named = Cli(addressed, env={"PGHOSTADDR": "127.0.0.2"})
    assert named("asset", "list", "--format", "tsv").exit_code == 0
    from_environment = Cli(
        "",
        env={
            "WALLETCTL_DATABASE_URL": "",
            "PGHOSTADDR": "127.0.0.1",
            "PGPORT": str(params.get("port", 5432)),
            "PGUSER": str(params.get("user", "postgres")),
            "PGDATABASE": str(params["dbname"]),
        },
    )
    assert from_environment("asset", "list", "--format", "tsv").exit_code == 0
