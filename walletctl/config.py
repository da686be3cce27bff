"""Where the database is, and the few settings an operator can change.

Resolution order for the database (the primary, where everything is written):
``--database-url`` > ``WALLETCTL_DATABASE_URL`` > the config file's ``database_url`` > the
PG* environment variables when they name a server (PGHOST, PGHOSTADDR, PGPORT,
PGDATABASE, PGSERVICE) > the embedded server in the data directory.

Reports may read from another server (a streaming standby): ``--read-url`` >
``WALLETCTL_READ_URL`` > the config file's ``read_url``; none by default.

Connection strings are any form libpq reads, passed to it as written (walletctl.conninfo).
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from walletctl import conninfo
from walletctl.errors import InvalidInput

APP_NAME = "walletctl"
DEFAULT_CONFIRM_ABOVE = 100_000
CONFIG_KEYS = frozenset(
    ("database_url", "read_url", "data_dir", "confirm_above", "prepared_statements")
)

Source = Literal[
    "--database-url",
    "WALLETCTL_DATABASE_URL",
    "config file",
    "PG environment",
    "embedded",
    "--read-url",
    "WALLETCTL_READ_URL",
]

SERVER_ENVIRONMENT = ("PGSERVICE", "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE")
"""libpq's variables that choose a server. Set (and not empty), they name the server
walletctl uses when it has no URL of its own, never its embedded one. PGUSER, PGPASSWORD,
PGSSLMODE and the others apply to whatever server is used, but choose none."""

PreparedStatements = Literal["auto", "on", "off"]
"""Server-side prepared statements: "auto" uses them unless a connection pooler sits
between walletctl and PostgreSQL (PgBouncer in transaction pooling cannot keep them)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the config file and the environment say. Missing keys take their defaults."""

    config_path: Path
    database_url: str | None = None
    data_dir: Path | None = None
    confirm_above: int = DEFAULT_CONFIRM_ABOVE
    read_url: str | None = None
    prepared_statements: PreparedStatements = "auto"


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """Where to connect: a libpq connection string (``url``, any form; empty when the PG*
    environment says it all), or the embedded server kept in ``data_dir``."""

    source: Source
    url: str | None
    data_dir: Path | None
    reason: str = ""
    """Why this server, for `db status`: the variables that named it, say."""

    @property
    def embedded(self) -> bool:
        return self.url is None

    @property
    def shown(self) -> str:
        """The connection string for people to read (password masked)."""
        if self.url is None:
            return f"embedded server in {self.data_dir}"
        if self.url == "":
            return f"libpq defaults and {self.reason}"
        return conninfo.masked(self.url)


def config_path() -> Path:
    override = os.environ.get("WALLETCTL_CONFIG")
    if override:
        return Path(override)
    import platformdirs

    return platformdirs.user_config_path(APP_NAME) / "config.toml"


def read_config_text(path: Path, *, required: bool) -> str | None:
    """The config file's text; None when there is none and none was asked for.

    ``$WALLETCTL_CONFIG`` names a file the operator meant: missing, a folder or a FIFO is
    an error, never a silent fallback to the embedded ledger (``/dev/null`` says "no
    config file"). The default location may simply not exist. Opened without blocking and
    checked before reading, so a FIFO cannot hang the command.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if required:
            raise InvalidInput(f"config file {path} (WALLETCTL_CONFIG) does not exist") from None
        return None
    except OSError as exc:
        raise InvalidInput(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISCHR(mode) and os.path.realpath(path) == os.devnull:
            return ""
        if not stat.S_ISREG(mode):
            raise InvalidInput(f"config file {path} is not a regular file ({_file_kind(mode)})")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read config file {path}: {exc}") from None
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def load_settings() -> Settings:
    """Read the config file (if any) and the environment.

    A config file that cannot be read or parsed is an error, not something to skip
    silently: the operator meant something by it.
    """
    path = config_path()
    values: dict[str, object] = {}
    text = read_config_text(path, required=bool(os.environ.get("WALLETCTL_CONFIG")))
    if text:
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"cannot read config file {path}: {exc}") from exc
    unknown = set(values) - CONFIG_KEYS
    if unknown:
        raise InvalidInput(f"config file {path}: unknown key(s) {', '.join(sorted(unknown))}")

    database_url = _url_setting(values, "database_url", path)
    read_url = _url_setting(values, "read_url", path)
    data_dir = os.environ.get("WALLETCTL_DATA_DIR") or values.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise InvalidInput(f"config file {path}: data_dir must be a string")
    confirm_above = _confirm_above(values.get("confirm_above"), path)
    return Settings(
        config_path=path,
        database_url=database_url,
        data_dir=Path(data_dir).expanduser().absolute() if data_dir else None,
        confirm_above=confirm_above,
        read_url=read_url,
        prepared_statements=_prepared_statements(values.get("prepared_statements"), path),
    )


def _url_setting(values: dict[str, object], key: str, path: Path) -> str | None:
    url = values.get(key)
    if url is not None and not isinstance(url, str):
        raise InvalidInput(f"config file {path}: {key} must be a string")
    if url is not None and not url.strip():
        instead = "the embedded server" if key == "database_url" else "no read server"
        raise InvalidInput(f"config file {path}: {key} is empty; remove the key for {instead}")
    return url


def _prepared_statements(from_file: object, path: Path) -> PreparedStatements:
    from_env = os.environ.get("WALLETCTL_PREPARED_STATEMENTS")
    value: object = from_env if from_env else from_file
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    if value in ("auto", "on", "off"):
        return value
    where = (
        "WALLETCTL_PREPARED_STATEMENTS" if from_env else f"config file {path}: prepared_statements"
    )
    raise InvalidInput(f"{where} must be auto, on or off, got {value!r}")


def _confirm_above(from_file: object, path: Path) -> int:
    from_env = os.environ.get("WALLETCTL_CONFIRM_ABOVE")
    if from_env is not None:
        try:
            value = int(from_env)
        except ValueError:
            raise InvalidInput(
                f"WALLETCTL_CONFIRM_ABOVE must be a whole number, got {from_env!r}"
            ) from None
    elif from_file is None:
        return DEFAULT_CONFIRM_ABOVE
    elif isinstance(from_file, int) and not isinstance(from_file, bool):
        value = from_file
    else:
        raise InvalidInput(f"config file {path}: confirm_above must be a whole number")
    if value < 0:
        raise InvalidInput("confirm_above must not be negative")
    return value


def resolve_target(option_url: str | None, settings: Settings) -> DatabaseTarget:
    """Pick the database (the primary) by the documented order of precedence."""
    env_url = os.environ.get("WALLETCTL_DATABASE_URL")
    if option_url is not None:
        return DatabaseTarget(
            "--database-url",
            conninfo.validated(option_url),
            None,
            reason="given on the command line",
        )
    if env_url:
        return DatabaseTarget(
            "WALLETCTL_DATABASE_URL",
            conninfo.validated(env_url),
            None,
            reason="WALLETCTL_DATABASE_URL is set (it comes before the config file)",
        )
    if settings.database_url is not None:
        return DatabaseTarget(
            "config file",
            conninfo.validated(settings.database_url),
            None,
            reason=f"database_url in {settings.config_path}",
        )
    named = server_environment()
    if named:
        shown = ", ".join(f"{name}={value}" for name, value in named.items())
        return DatabaseTarget("PG environment", "", None, reason=shown)
    return DatabaseTarget(
        "embedded",
        None,
        settings.data_dir or default_data_dir(),
        reason="no URL configured and no PG* variable naming a server",
    )


def resolve_read_target(option_url: str | None, settings: Settings) -> DatabaseTarget | None:
    """The server reports read from, when one is configured (else None: the primary)."""
    env_url = os.environ.get("WALLETCTL_READ_URL")
    what = "read URL"
    if option_url is not None:
        return DatabaseTarget("--read-url", conninfo.validated(option_url, what), None)
    if env_url:
        return DatabaseTarget("WALLETCTL_READ_URL", conninfo.validated(env_url, what), None)
    if settings.read_url is not None:
        return DatabaseTarget("config file", conninfo.validated(settings.read_url, what), None)
    return None


def server_environment() -> dict[str, str]:
    """The PG* variables that are set and choose a server, with their values."""
    return {name: os.environ[name] for name in SERVER_ENVIRONMENT if os.environ.get(name)}


def default_data_dir() -> Path:
    """Where the embedded server keeps its files.

    As root the server runs as a separate system user (PostgreSQL refuses root), which
    must be able to reach the folder without any existing folder being opened to it:
    /var/lib is open to every user, /root is not. So root has one data folder per
    machine, whatever HOME is (WALLETCTL_DATA_DIR chooses another).
    """
    if os.geteuid() == 0:
        return Path("/var/lib") / APP_NAME
    import platformdirs

    return platformdirs.user_data_path(APP_NAME)
