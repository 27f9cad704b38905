"""Limit/offset/cursor paging of SPEC §2.8, and the small SQL helpers the list queries share.

A cursor is base64url JSON of the sort key of the last item returned (`k`) and a fingerprint of the filters it
was issued for (`f`); it is rejected for other filters and with a non-zero offset. Cursor pages use keyset
predicates, so they are stable under concurrent inserts; `next_cursor` is returned in both modes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pandora_users.domain.errors import FieldError, InvalidRequest
from pandora_users.timestamps import rfc3339

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_INTEGER = re.compile(r"-?[0-9]{1,18}")


def invalid(name: str, message: str) -> InvalidRequest:
    return InvalidRequest(details=[FieldError(name, message)])


def _integer(name: str, value: object, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        raise invalid(name, "must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    raise invalid(name, "must be an integer")


@dataclass(frozen=True)
class PageRequest:
    """A valid page request (construction checks the rules of SPEC §2.8)."""

    limit: int = DEFAULT_LIMIT
    offset: int = 0
    cursor: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise invalid("limit", f"must be an integer between 1 and {MAX_LIMIT}")
        if self.offset < 0:
            raise invalid("offset", "must be a non-negative integer")
        if self.cursor is not None and not self.cursor:
            raise invalid("cursor", "invalid cursor")
        if self.cursor and self.offset:
            raise invalid("cursor", "cannot be combined with a non-zero offset")

    @classmethod
    def parse(cls, limit: object = None, offset: object = None, cursor: object = None) -> PageRequest:
        """From raw `limit`, `offset` and `cursor` (query-string text or numbers); 400 on a bad value."""
        if cursor is not None and not isinstance(cursor, str):
            raise invalid("cursor", "invalid cursor")
        return cls(_integer("limit", limit, DEFAULT_LIMIT), _integer("offset", offset, 0), cursor or None)


def fingerprint(kind: str, filters: Mapping[str, Any]) -> str:
    """A short hash of what a list is filtered and ordered by (part of every cursor)."""
    canonical = json.dumps([kind, filters], sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def _plain(value: object) -> str:
    return rfc3339(value) if isinstance(value, datetime) else str(value)


def encode_cursor(key: Sequence[Any], print_: str) -> str:
    raw = json.dumps({"k": list(key), "f": print_}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def decode_cursor(page: PageRequest, print_: str) -> list[Any] | None:
    """The sort key of a cursor page (None without a cursor); 400 if malformed or issued for other filters."""
    if page.cursor is None:
        return None
    try:
        padded = page.cursor + "=" * (-len(page.cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error, RecursionError):
        raise invalid("cursor", "invalid cursor") from None
    if not isinstance(data, dict) or not isinstance(data.get("k"), list) or not isinstance(data.get("f"), str):
        raise invalid("cursor", "invalid cursor")
    if data["f"] != print_:
        raise invalid("cursor", "cursor was issued for other filters")
    key: list[Any] = data["k"]
    return key


def parse_ts(value: object, name: str) -> datetime:
    """A cursor's timestamp back to a datetime (400 if it is not one)."""
    if not isinstance(value, str):
        raise invalid(name, "invalid cursor")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(name, "invalid cursor") from None
    if parsed.tzinfo is None:
        raise invalid(name, "invalid cursor")
    return parsed


@dataclass
class Where:
    """AND-ed conditions with asyncpg `$n` placeholders."""

    conditions: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, condition: str, *values: Any) -> None:
        """Add a condition whose `{}` placeholders take the values in order."""
        self.conditions.append(condition.format(*(self.arg(v) for v in values)))

    def copy(self) -> Where:
        return Where(list(self.conditions), list(self.args))

    @property
    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.conditions) if self.conditions else ""


def select(what: str, source: str, where: Where, tail: str = "") -> str:
    """SELECT text from constant pieces and `$n` placeholders; every value travels as an argument."""
    return f"SELECT {what} FROM {source}{where.sql}{tail}"  # noqa: S608 - no value is interpolated


def envelope(key: str, items: list[Any], total: int, page: PageRequest, next_cursor: str | None) -> dict[str, Any]:
    """The list response of SPEC §2.8."""
    return {key: items, "total": total, "limit": page.limit, "offset": page.offset, "next_cursor": next_cursor}
