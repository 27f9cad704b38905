"""The access-log query of SPEC §4.4 (`GET /access-log`): request-level entries, newest first, filters AND-ed."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from pandora_users.audit.access_log import COLUMNS
from pandora_users.audit.vocabulary import CATEGORIES, EVENT_TYPES, SEVERITIES, STATUSES
from pandora_users.timestamps import rfc3339
from projections.queries.pagination import PageRequest, Where, envelope, fingerprint, invalid
from projections.queries.sessions import newest_first

MAX_TEXT = 256


@dataclass(frozen=True)
class AccessLogFilters:
    """Filters of `GET /access-log`; `from_` inclusive and `to` exclusive on `created_at`."""

    from_: datetime | None = None
    to: datetime | None = None
    user_id: UUID | None = None
    actor_id: str | None = None
    event_type: str | None = None
    category: str | None = None
    severity: str | None = None
    status: str | None = None
    ip_address: str | None = None
    request_id: str | None = None

    def validate(self) -> None:
        for name, allowed in (
            ("event_type", EVENT_TYPES),
            ("category", CATEGORIES),
            ("severity", SEVERITIES),
            ("status", STATUSES),
        ):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise invalid(name, f"must be one of {', '.join(sorted(allowed))}")
        for name in ("actor_id", "request_id"):
            value = getattr(self, name)
            if value is not None and not 1 <= len(value) <= MAX_TEXT:
                raise invalid(name, f"must be 1 to {MAX_TEXT} characters")
        if self.ip_address is not None:
            try:
                ipaddress.ip_address(self.ip_address)
            except ValueError:
                raise invalid("ip_address", "must be an IP address") from None
        for label, moment in (("from", self.from_), ("to", self.to)):
            if moment is not None and moment.tzinfo is None:
                raise invalid(label, "must be an RFC 3339 timestamp with an offset")


def _where(filters: AccessLogFilters) -> Where:
    where = Where()
    for column in ("user_id", "actor_id", "event_type", "category", "severity", "status", "request_id"):
        value = getattr(filters, column)
        if value is not None:
            where.add(f"{column} = {{}}", value)
    if filters.ip_address is not None:
        where.add("ip_address = {}::inet", filters.ip_address)
    if filters.from_ is not None:
        where.add("created_at >= {}", filters.from_)
    if filters.to is not None:
        where.add("created_at < {}", filters.to)
    return where


def to_dto(row: Any) -> dict[str, Any]:
    """An AccessLogEntryDTO: the columns of SPEC §9.3 with the same names."""
    dto = {name: row[name] for name in COLUMNS}
    for name in ("id", "user_id", "session_id", "ip_address"):
        dto[name] = None if row[name] is None else str(row[name])
    dto["created_at"] = rfc3339(row["created_at"])
    dto["retention_until"] = rfc3339(row["retention_until"])
    metadata = row["metadata"]
    dto["metadata"] = json.loads(metadata) if isinstance(metadata, str) else metadata
    return dto


async def access_log(pool: asyncpg.Pool, filters: AccessLogFilters, page: PageRequest) -> dict[str, Any]:
    """`{"entries": [AccessLogEntryDTO], "total", "limit", "offset", "next_cursor"}`, newest first."""
    filters.validate()
    print_ = fingerprint("access-log", {k: v for k, v in asdict(filters).items() if v is not None})
    found = await newest_first(
        pool, columns=", ".join(COLUMNS), source="access_log", where=_where(filters), page=page, print_=print_
    )
    return envelope("entries", [to_dto(row) for row in found.rows], found.total, page, found.next_cursor)
