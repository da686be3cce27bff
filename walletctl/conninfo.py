"""Connection strings the libpq way: every form libpq reads passes through as written.

libpq reads URLs (``postgresql://`` or ``postgres://``) and keyword/value strings
(``host=db1 dbname=wallet``). Either may name several hosts (``host=a,b
target_session_attrs=read-write``), a Unix-socket folder (``postgresql:///wallet?host=/run/
postgresql``), a service of ``~/.pg_service.conf`` (``service=wallet``), or leave things out
for the PG* environment variables and libpq's defaults to fill in. walletctl never rebuilds
a connection string: it checks it with libpq's own parser (psycopg.conninfo) and hands it to
libpq unchanged. What it writes itself is only a copy for people to read, with the password
replaced by ``***`` (``masked``).
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote

from walletctl.errors import InvalidInput

URL_PREFIXES = ("postgresql://", "postgres://")
SQLALCHEMY_PREFIX = "postgresql+psycopg://"
"""Accepted as a synonym of postgresql:// (what SQLAlchemy and alembic configs hold)."""

MASK = "***"

# The start of a URL's query: "?" and a libpq keyword with its "=". A "?" elsewhere (in a
# password that was not percent-encoded) does not end the part with the credentials.
_URL_QUERY = re.compile(r"\?[A-Za-z_]+=")
# A password in a URL's query, up to the next "&keyword=" (so a raw "&" inside it is hidden
# too).
_QUERY_PASSWORD = re.compile(r"(?<=[?&])password=.*?(?=&[A-Za-z_]+=|$)", re.DOTALL)
# A password in a keyword/value string: quoted (to its closing quote, or to the end when
# unterminated) or up to the next unescaped space; also after a forgotten "=".
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=?\s*)('(?:[^'\\]|\\.)*'?|(?:\\.|\S)*)")


def is_url(conninfo: str) -> bool:
    """Whether libpq reads ``conninfo`` as a URL (otherwise: keyword/value pairs)."""
    return conninfo.startswith(URL_PREFIXES)


def normalised(conninfo: str) -> str:
    """``conninfo`` with a SQLAlchemy-style scheme turned into libpq's; anything else as is."""
    if conninfo.startswith(SQLALCHEMY_PREFIX):
        return "postgresql://" + conninfo[len(SQLALCHEMY_PREFIX) :]
    return conninfo


def validated(conninfo: str, what: str = "database URL") -> str:
    """``conninfo`` as libpq will read it, checked by libpq's parser.

    Refused (InvalidInput, naming it with its password masked): empty text or control
    characters; text libpq cannot parse; a URL whose password libpq would read differently
    from how it is written (a ``/`` or ``@`` in it that is not percent-encoded makes libpq
    read part of the password as a host, a port or a database name); a port outside
    1-65535.
    """
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    if not conninfo.strip() or any(ord(char) < 32 for char in conninfo):
        raise InvalidInput(f"{what} is empty or contains control characters")
    conninfo = normalised(conninfo)
    scheme = conninfo.split("://", 1)[0] if "://" in conninfo.split("=", 1)[0] else None
    if scheme is not None and not is_url(conninfo):
        raise InvalidInput(
            f"malformed {what} {masked(conninfo)!r}: expected postgresql://user@host/dbname "
            "or keyword=value pairs (host=... dbname=...)"
        )
    try:
        params = conninfo_to_dict(conninfo)
    except ProgrammingError as exc:
        reason = _scrubbed(_first_line(exc), conninfo)
        raise InvalidInput(f"malformed {what} {masked(conninfo)!r}: {reason}") from None
    if is_url(conninfo):
        written = _url_password(conninfo)
        if written is not None and unquote(written) != params.get("password"):
            raise InvalidInput(
                f"malformed {what} {masked(conninfo)!r}: its password holds a character a URL "
                "must percent-encode (/ as %2F, @ as %40, : as %3A); libpq would read part of "
                "it as a host, port or database. Encode it, or keep the password in ~/.pgpass"
            )
    for port in str(params.get("port", "")).split(","):
        if port.strip() and not (port.strip().isdigit() and 0 < int(port) < 65536):
            raise InvalidInput(
                f"malformed {what} {masked(conninfo)!r}: port {port.strip()!r} is not a port "
                "number (1-65535)"
            )
    _refuse_a_stray_hostaddr(conninfo, params, what)
    return conninfo


def _refuse_a_stray_hostaddr(conninfo: str, params: dict[str, Any], what: str) -> None:
    """libpq fills a parameter the text leaves out from its PG* variable, and connects to
    ``hostaddr`` whatever ``host`` says: with PGHOSTADDR left set in a shell, a URL naming
    one server would reach another, silently. A URL that names its host must name its
    address too, or the variable be unset."""
    stray = os.environ.get("PGHOSTADDR")
    if stray and "hostaddr" not in params and ("host" in params or "service" in params):
        raise InvalidInput(
            f"{what} {masked(conninfo)!r} names a host, but PGHOSTADDR={stray} would make "
            "libpq connect to that address instead: unset PGHOSTADDR, or put hostaddr= in "
            f"the {what}"
        )


def masked(conninfo: str) -> str:
    """``conninfo`` for people to read: the password, wherever it is, replaced by ***.

    A URL keeps its form (the text between the first ``:`` of the credentials and the last
    ``@`` before the query is masked, so a password holding ``/``, ``#``, ``?`` or ``@`` is
    hidden whole); a keyword/value string keeps its form too, with the password's value
    masked in place. If libpq reads a password the masked text still shows, the
    string is rendered again by libpq's rules with that key masked."""
    text = normalised(conninfo)
    if "://" in text.split("=", 1)[0]:
        return _masked_url(text)
    shown = _KEYWORD_PASSWORD.sub(lambda match: match.group(1) + MASK, text)
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        password = conninfo_to_dict(text).get("password")
    except ProgrammingError:
        return shown
    if password and str(password) in shown:
        return make_conninfo("", **{**conninfo_to_dict(text), "password": MASK})
    return shown


def _url_parts(url: str) -> tuple[str, str, str]:
    """(scheme://, the part before the query, the query)."""
    scheme, _, rest = url.partition("://")
    query = _URL_QUERY.search(rest)
    cut = query.start() if query else len(rest)
    return scheme + "://", rest[:cut], rest[cut:]


def _url_password(url: str) -> str | None:
    """The password as written in a URL's credentials (before ``@``), or None."""
    _, head, _ = _url_parts(url)
    at = head.rfind("@")
    if at < 0:
        return None
    credentials = head[:at]
    colon = credentials.find(":")
    return credentials[colon + 1 :] if colon >= 0 else None


def _masked_url(url: str) -> str:
    prefix, head, query = _url_parts(url)
    at = head.rfind("@")
    if at >= 0:
        colon = head.find(":", 0, at)
        if colon >= 0:
            head = head[: colon + 1] + MASK + head[at:]
    query = _QUERY_PASSWORD.sub(f"password={MASK}", query)
    return prefix + head + query


def _secrets(conninfo: str) -> list[str]:
    """Every spelling of a password the text may hold, to scrub from libpq's messages."""
    found: list[str] = []
    text = normalised(conninfo)
    if "://" in text.split("=", 1)[0]:
        written = _url_password(text)
        if written:
            found += [written, unquote(written)]
        for match in _QUERY_PASSWORD.finditer(_url_parts(text)[2]):
            value = match.group(0).partition("=")[2]
            found += [value, unquote(value), *value.split("&")]
    else:
        for match in _KEYWORD_PASSWORD.finditer(text):
            value = match.group(2)
            found += [value, value.strip("'")]
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def _scrubbed(message: str, conninfo: str) -> str:
    """libpq's message about ``conninfo`` with any part of its password taken out (a parse
    error quotes the token it stopped at, which may be the password)."""
    for secret in _secrets(conninfo):
        message = message.replace(secret, MASK)
    return message


def scrubbed_error(exc: BaseException, conninfo: str) -> str:
    """The first line of a psycopg error about ``conninfo``, without its password."""
    return _scrubbed(_first_line(exc), conninfo)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
