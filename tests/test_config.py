"""Where the database is: option > environment > config file > embedded; passwords masked."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from walletctl.config import load_settings, resolve_target
from walletctl.conninfo import masked
from walletctl.database import SCHEMA_HEAD
from walletctl.errors import InvalidInput

from .cli_helpers import Cli


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.replace("@", f":{password}@", 1) if "@" in parts.netloc else parts.netloc
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.toml"
    monkeypatch.setenv("WALLETCTL_CONFIG", str(path))
    monkeypatch.delenv("WALLETCTL_DATABASE_URL", raising=False)
    monkeypatch.delenv("WALLETCTL_DATA_DIR", raising=False)
    monkeypatch.delenv("WALLETCTL_CONFIRM_ABOVE", raising=False)
    return path


def test_precedence_option_then_environment_then_file_then_embedded(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config_file.write_text(
        f'database_url = "postgresql://file@h/db"\ndata_dir = "{tmp_path}/data"\n'
    )
    monkeypatch.setenv("WALLETCTL_DATABASE_URL", "postgresql://env@h/db")
    settings = load_settings()
    assert resolve_target("postgresql://option@h/db", settings).source == "--database-url"
    assert resolve_target(None, settings).url == "postgresql://env@h/db"
    monkeypatch.delenv("WALLETCTL_DATABASE_URL")
    assert resolve_target(None, settings).source == "config file"
    config_file.write_text(f'data_dir = "{tmp_path}/data"\n')
    target = resolve_target(None, load_settings())
    assert target.embedded and target.data_dir == tmp_path / "data"


@pytest.mark.parametrize(
    "text",
    ["database_url = ", "colour = 'red'\n", "confirm_above = 'many'\n", "database_url = 5\n"],
)
def test_a_broken_config_file_is_an_error_not_ignored(config_file: Path, text: str) -> None:
    config_file.write_text(text)
    with pytest.raises(InvalidInput, match=str(config_file)):
        load_settings()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
        (
            "postgresql://u@h/db?password=s3cret&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://u:pa/ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:pa#ss?x@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@ss@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
        ("postgresql://u:p%2Fss@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
        (
            "postgresql://h/db?password=a&b&sslmode=require",
            "postgresql://h/db?password=***&sslmode=require",
        ),
        ("host=h password=s3cret dbname=db", "host=h password=*** dbname=db"),
        ("host=h password='s3 cr/et#?' dbname=db", "host=h password=*** dbname=db"),
        ("host=h password = s3cret", "host=h password = ***"),
        ("host=h password s3cret", "host=h password ***"),
        ("host=h password='unterminated", "host=h password=***"),
    ],
)
def test_passwords_are_masked(url: str, expected: str) -> None:
    assert masked(url) == expected


def _status(cli: Cli, *args: str) -> dict[str, object]:
    result = cli(*args, "db", "status", "--json")
    assert result.exit_code == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_db_status_tells_the_truth_for_option_env_and_config_file(
    database_url: str, config_file: Path
) -> None:
    secret_url = _with_password(database_url, "hunter2")
    by_option = _status(
        Cli(database_url, env={"WALLETCTL_DATABASE_URL": ""}), "--database-url", secret_url
    )
    assert by_option["source"] == "--database-url" and by_option["mode"] == "server"
    assert "hunter2" not in json.dumps(by_option) and ":***@" in str(by_option["database"])
    assert by_option["schema_current"] is True and by_option["schema_revision"] == SCHEMA_HEAD
    assert by_option["server_version"]

    by_env = _status(Cli(secret_url))
    assert by_env["source"] == "WALLETCTL_DATABASE_URL"
    assert "hunter2" not in json.dumps(by_env)

    config_file.write_text(f'database_url = "{secret_url}"\n')
    by_file = _status(
        Cli(database_url, env={"WALLETCTL_DATABASE_URL": "", "WALLETCTL_CONFIG": str(config_file)})
    )
    assert by_file["source"] == "config file" and by_file["schema_current"] is True
    assert "hunter2" not in json.dumps(by_file)


def test_an_unreachable_server_is_exit_6_without_the_password(database_url: str) -> None:
    cli = Cli("postgresql://postgres:hunter2@127.0.0.1:1/nowhere")
    for args in (["balance", "alice"], ["db", "status"], ["reconcile"]):
        result = cli(*args)
        assert result.exit_code == 6
        assert len(result.stderr.splitlines()) == 1
        assert "hunter2" not in result.stderr and "***" in result.stderr


def test_every_command_refuses_a_schema_behind_head(server_url: str) -> None:
    import uuid

    import psycopg

    from .conftest import _with_database

    name = f"walletctl_behind_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        cli = Cli(_with_database(server_url, name))
        for args in (
            ["balance", "alice"],
            ["topup", "alice", "5"],
            ["reconcile"],
            ["asset", "list"],
            ["audit", "alice"],
        ):
            result = cli(*args)
            assert result.exit_code == 6, args
            assert "walletctl db upgrade" in result.stderr
        assert cli("db", "upgrade").exit_code == 0
        assert cli("asset", "list").exit_code == 0
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _no_fallback_cli(database_url: str, config: str, tmp_path: Path) -> Cli:
    # If the config file were skipped, the command would fall back to an embedded server
    # in a folder that cannot exist (under a regular file), and fail with exit 6.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return Cli(
        database_url,
        env={
            "WALLETCTL_DATABASE_URL": "",
            "WALLETCTL_CONFIG": config,
            "WALLETCTL_DATA_DIR": str(blocker / "data"),
        },
    )


@pytest.mark.parametrize("kind", ["missing", "folder", "fifo", "empty url"])
def test_a_config_source_that_cannot_be_read_is_exit_2_naming_it(
    database_url: str, tmp_path: Path, kind: str
) -> None:
    import os

    path = tmp_path / "config.toml"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "empty url":
        path.write_text('database_url = ""\n')
    result = _no_fallback_cli(database_url, str(path), tmp_path)("asset", "list")
    assert result.exit_code == 2, result.output
    assert str(path) in result.stderr and len(result.stderr.splitlines()) == 1


def test_dev_null_is_no_config_file(database_url: str, tmp_path: Path) -> None:
    import os

    result = Cli(database_url, env={"WALLETCTL_CONFIG": os.devnull})("asset", "list")
    assert result.exit_code == 0, result.output
