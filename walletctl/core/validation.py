"""Checks on what a caller hands the core, before a connection is used.

The database enforces the same rules (CHECK constraints); checking here first gives a
clear message naming the field, and keeps a bad request from reaching the server at all.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime

from walletctl.errors import InvalidAmount, InvalidInput
from walletctl.textrules import (
    CONTROL_CHARACTERS,
    EDGE_SPACE,
    INVISIBLE_CHARACTERS,
    MAX_ID_LENGTH,
    MAX_REASON_LENGTH,
    TREASURY_LABEL,
)

MAX_AMOUNT = 2**63 - 1
# NUL is a control character here too; PostgreSQL cannot store it at all.
_CONTROL = re.compile(CONTROL_CHARACTERS.replace("[", "[\\x00", 1))
_EDGE_SPACE = re.compile(EDGE_SPACE)
_INVISIBLE = re.compile(INVISIBLE_CHARACTERS)
# Also a valid commodity for beancount and hledger: up to 24 characters, ending in a letter
# or digit.
_ASSET_CODE = re.compile(r"[A-Z]([A-Z0-9_]{0,22}[A-Z0-9])?")


def amount(value: object) -> int:
    """A positive whole number of the asset's smallest unit, within bigint."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAmount(f"amount must be a whole number, got {value!r}")
    if value <= 0:
        raise InvalidAmount(f"amount must be positive, got {value}")
    if value > MAX_AMOUNT:
        raise InvalidAmount(f"amount {value} exceeds the largest amount ({MAX_AMOUNT})")
    return value


# Digits, or digits in groups of three after a first group of one to three, separated by
# one kind of separator throughout: "1500", "1_500", "1,500", "1,234,567". A separator
# anywhere else ("1,5", ",,7,,", "1__0", "1,500_000") is a typing mistake that must not be
# read as some other number.
_AMOUNT_TEXT = re.compile(r"[0-9]+|[0-9]{1,3}(?:,[0-9]{3})+|[0-9]{1,3}(?:_[0-9]{3})+")
# More digits than the largest amount has (19): refused before int() is asked to convert
# them (Python refuses to convert over 4,300 digits at all).
_MAX_AMOUNT_DIGITS = len(str(MAX_AMOUNT))


def parse_amount(text: str) -> int:
    """An amount typed by a person: digits, optionally grouped by three with '_' or ','."""
    cleaned = text.strip()
    if not _AMOUNT_TEXT.fullmatch(cleaned):
        if cleaned.startswith("-") and _AMOUNT_TEXT.fullmatch(cleaned[1:]):
            raise InvalidAmount(f"amount must be positive, got {_show(text)}")
        raise InvalidAmount(
            "amount must be a positive whole number of the asset's smallest unit, "
            f"got {_show(text)}"
        )
    digits = cleaned.replace("_", "").replace(",", "").lstrip("0") or "0"
    if len(digits) > _MAX_AMOUNT_DIGITS:
        raise InvalidAmount(f"amount {_show(text)} exceeds the largest amount ({MAX_AMOUNT})")
    return amount(int(digits))


def identifier(value: object, what: str) -> str:
    """A user id, idempotency key or actor: 1-200 characters, no control or invisible
    characters, no space at either end, in Unicode normal form C (walletctl/textrules.py)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text, got {value!r}")
    if not value:
        raise InvalidInput(f"{what} must not be empty")
    if _EDGE_SPACE.search(value):
        raise InvalidInput(f"{what} must not start or end with a space: {_show(value)}")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"{what} is {len(value)} characters long, at most {MAX_ID_LENGTH}")
    if _CONTROL.search(value):
        raise InvalidInput(f"{what} contains control characters: {_show(value)}")
    invisible = _INVISIBLE.search(value)
    if invisible:
        raise InvalidInput(
            f"{what} contains an invisible or look-alike space character "
            f"(U+{ord(invisible.group()):04X}): {_show(value)}"
        )
    if not unicodedata.is_normalized("NFC", value):
        raise InvalidInput(
            f"{what} is not in Unicode normal form C (write it as "
            f"{unicodedata.normalize('NFC', value)!r}): {_show(value)}"
        )
    return value


def user_id(value: object) -> str:
    checked = identifier(value, "user id")
    if checked.lower() == TREASURY_LABEL.lower():
        raise InvalidInput(f"{TREASURY_LABEL!r} names the Treasury and cannot be a user id")
    return checked


def idempotency_key(value: object) -> str:
    return identifier(value, "idempotency key")


def on_behalf_of(value: object) -> str | None:
    """Whom a posting is for, as the caller says (--actor); optional."""
    return None if value is None else identifier(value, "actor (on behalf of)")


def reason(value: object, *, required: bool) -> str | None:
    if value is None or value == "":
        if required:
            raise InvalidInput("a reason is required for this kind of posting (--reason)")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"reason must be text, got {value!r}")
    if len(value) > MAX_REASON_LENGTH:
        raise InvalidInput(f"reason is {len(value)} characters long, at most {MAX_REASON_LENGTH}")
    if _CONTROL.search(value):
        raise InvalidInput(f"reason contains control characters: {_show(value)}")
    return value


def asset_code(value: object) -> str:
    if not isinstance(value, str) or not _ASSET_CODE.fullmatch(value):
        raise InvalidInput(
            "asset code must be 1-24 of A-Z, 0-9 and _, starting with a letter and not ending "
            f"with _, got {_show(value)}"
        )
    return value


def asset_name(value: object) -> str:
    return identifier(value, "asset name")


def transaction_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_AMOUNT:
        raise InvalidInput(f"transaction id must be a positive whole number, got {_show(value)}")
    return value


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)


def period(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """[since, until) with its open ends filled in; since must come before until."""
    if since is not None and until is not None and since >= until:
        raise InvalidInput("--since must be before --until")
    return since or EPOCH, until or END_OF_TIME


def limit(value: int | None) -> int | None:
    if value is not None and value <= 0:
        raise InvalidInput(f"limit must be a positive number, got {value}")
    return value


def _show(value: object) -> str:
    """A value quoted for an error line: escaped, and cut short if long."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
