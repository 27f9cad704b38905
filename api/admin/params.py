"""Query parameters of the admin API: their OpenAPI declarations and their strict parsing (400 naming them).

Every parameter is taken as text and parsed here, so a bad value is `invalid_request` with a detail naming the
parameter (SPEC §2.6), never a framework error.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from uuid import UUID

from litestar.params import Parameter

from api.routes.common import parse_id
from pandora_users.domain.errors import FieldError, InvalidRequest

Q = str | None
_RFC3339 = re.compile(
    r"^(?P<base>\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d{1,9}))?(?P<offset>[Zz]|[+-]\d{2}:\d{2})$"
)
_INTEGER = re.compile(r"^(0|[1-9][0-9]{0,17})$")
_INSTANT = "RFC 3339 with an offset (Z or ±hh:mm)"


def _q(name: str, description: str) -> Q:
    value: Q = Parameter(query=name, default=None, description=description)
    return value


LIMIT = _q("limit", "1..100, default 20")
OFFSET = _q("offset", "≥ 0, default 0; not with a non-zero offset and a cursor together")
CURSOR = _q("cursor", "the `next_cursor` of the previous page (issued for the same filters)")
INCLUDE_DELETED = _q("include_deleted", "`true` or `false` (default): include soft-deleted and erased users")
KYC_STATUS = _q("kyc_status", "pending, verified or rejected")
ROLE = _q("role", "user or admin")
CREATED_FROM = _q("created_from", f"{_INSTANT}, inclusive")
CREATED_TO = _q("created_to", f"{_INSTANT}, exclusive")
QUERY = _q("query", "required: 1..256 characters after trimming; case-insensitive substring, % and _ literal")
AS_OF = _q("as_of", f"{_INSTANT}, not in the future: the state at that instant, rebuilt from the events")
ORDER = _q("order", "desc (default) or asc")
TYPES = _q("type", "comma-separated published event types, e.g. user.kyc.updated,user.role.changed")
SESSION_STATUS = _q("status", "active (default) or all")
AFTER_POSITION = _q("after_position", "≥ 0, default 0: events with a greater position")
FROM = _q("from", f"{_INSTANT}, inclusive")
TO = _q("to", f"{_INSTANT}, exclusive")
USER_ID = _q("user_id", "the subject user's id")
ACTOR_ID = _q("actor_id", "a user id, service:<name>, system or cli")
EVENT_TYPE = _q("event_type", "an access-log event type, e.g. authz_change")
CATEGORY = _q("category", "authentication, authorization, data_access, data_modification, security or compliance")
SEVERITY = _q("severity", "info, warning, high or critical (exact match)")
STATUS = _q("status", "success, failure or error")
IP_ADDRESS = _q("ip_address", "the client IP address")
REQUEST_ID = _q("request_id", "the request's X-Request-ID")


def invalid(name: str, message: str) -> InvalidRequest:
    return InvalidRequest(details=[FieldError(name, message)])


def parse_instant(value: str | None, name: str) -> datetime | None:
    """RFC 3339 with an explicit offset (SPEC §2.2), converted to UTC; without an offset it is 400."""
    if value is None:
        return None
    match = _RFC3339.match(value)
    if match is None:
        raise invalid(name, "must be an RFC 3339 timestamp with an offset")
    fraction = f".{match['fraction'][:6]}" if match["fraction"] else ""  # Python keeps microseconds
    offset = "+00:00" if match["offset"] in ("Z", "z") else match["offset"]
    text = f"{match['base'].upper()}{fraction}{offset}"
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        raise invalid(name, "must be an RFC 3339 timestamp with an offset") from None


def require_instant(value: str, name: str) -> datetime:
    moment = parse_instant(value, name)
    if moment is None:
        raise invalid(name, "is required")
    return moment


def parse_bool(value: str | None, name: str) -> bool:
    if value is None:
        return False
    if value not in ("true", "false"):
        raise invalid(name, "must be true or false")
    return value == "true"


def parse_count(value: str | None, name: str, default: int) -> int:
    """A non-negative decimal integer (no sign, no spaces)."""
    if value is None:
        return default
    if not _INTEGER.match(value):
        raise invalid(name, "must be a non-negative integer")
    return int(value)


def parse_optional_id(value: str | None, name: str) -> UUID | None:
    return None if value is None else parse_id(value, name)
