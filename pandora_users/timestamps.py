"""The one wire format of a moment (SPEC §2.2): RFC 3339 in UTC, exactly six fractional digits, `Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(moment: datetime) -> str:
    """`2026-01-02T03:04:05.000006Z`; a naive datetime is taken as UTC. (isoformat is C; strftime was a few
    per cent of a read and of the forwarder.)"""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return utc.isoformat(timespec="microseconds")[:-6] + "Z"


def rfc3339_or_none(moment: datetime | None) -> str | None:
    """`rfc3339`, with None (a moment that has not happened) staying None."""
    return None if moment is None else rfc3339(moment)
