"""Where the database is, and the few settings an operator can change.

Resolution order for the database: ``--database-url`` > ``WALLETCTL_DATABASE_URL`` > the
config file's ``database_url`` > the embedded server in the data directory.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from walletctl.errors import InvalidInput

APP_NAME = "walletctl"
DEFAULT_CONFIRM_ABOVE = 100_000
URL_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")

Source = Literal["--database-url", "WALLETCTL_DATABASE_URL", "config file", "embedded"]


@dataclass(frozen=True, slots=True)
class Settings:
    """What the config file and the environment say. Missing keys take their defaults."""

    config_path: Path
    database_url: str | None = None
    data_dir: Path | None = None
    confirm_above: int = DEFAULT_CONFIRM_ABOVE


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """Where to connect: a server URL, or the embedded server kept in ``data_dir``."""

    source: Source
    url: str | None
    data_dir: Path | None

    @property
    def embedded(self) -> bool:
        return self.url is None


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
    unknown = set(values) - {"database_url", "data_dir", "confirm_above"}
    if unknown:
        raise InvalidInput(f"config file {path}: unknown key(s) {', '.join(sorted(unknown))}")

    database_url = values.get("database_url")
    if database_url is not None and not isinstance(database_url, str):
        raise InvalidInput(f"config file {path}: database_url must be a string")
    if database_url is not None and not database_url.strip():
        raise InvalidInput(
            f"config file {path}: database_url is empty; remove the key to use the embedded server"
        )
    data_dir = os.environ.get("WALLETCTL_DATA_DIR") or values.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise InvalidInput(f"config file {path}: data_dir must be a string")
    confirm_above = _confirm_above(values.get("confirm_above"), path)
    return Settings(
        config_path=path,
        database_url=database_url,
        data_dir=Path(data_dir).expanduser().absolute() if data_dir else None,
        confirm_above=confirm_above,
    )


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
    """Pick the database by the documented order of precedence."""
    env_url = os.environ.get("WALLETCTL_DATABASE_URL")
    if option_url is not None:
        return DatabaseTarget("--database-url", validate_url(option_url), None)
    if env_url:
        return DatabaseTarget("WALLETCTL_DATABASE_URL", validate_url(env_url), None)
    if settings.database_url is not None:
        return DatabaseTarget("config file", validate_url(settings.database_url), None)
    return DatabaseTarget("embedded", None, settings.data_dir or default_data_dir())


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


def validate_url(url: str) -> str:
    """Check that ``url`` is a PostgreSQL URL and return it in the form libpq reads."""
    if not url or any(ord(ch) < 32 for ch in url):
        raise InvalidInput("database URL is empty or contains control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise InvalidInput(f"malformed database URL {mask_url(url)!r}: {exc}") from None
    if parts.scheme not in URL_SCHEMES:
        raise InvalidInput(
            f"malformed database URL {mask_url(url)!r}: expected postgresql://user@host/dbname"
        )
    return urlunsplit(parts._replace(scheme="postgresql"))


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, in the netloc or in the query."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        credentials, host = netloc.rsplit("@", 1)
        if ":" in credentials:
            credentials = credentials.split(":", 1)[0] + ":***"
        netloc = f"{credentials}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(key, "***" if key == "password" else value) for key, value in pairs], safe="/*"
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))
