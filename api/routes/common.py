"""Small parsers shared by the route handlers (path ids, If-Match)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from litestar import Request

from api.auth import Principal
from api.deps import ApiDeps
from api.request_state import state_of
from pandora_users.domain.errors import DomainError, FieldError, InvalidRequest

CANONICAL_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
STRONG_ETAG = re.compile(r'^"(0|[1-9][0-9]*)"$')


def parse_id(value: str, name: str) -> uuid.UUID:
    """A canonical 36-character UUID (either case), or 400 naming the parameter."""
    if not CANONICAL_UUID.match(value):
        raise InvalidRequest(details=[FieldError(name, "must be a UUID in canonical form")])
    return uuid.UUID(value)


def parse_if_match(request: Request[Any, Any, Any]) -> int | None:
    """`"7"` → 7, `*` or absent → None; weak, unquoted or non-numeric values are 400 (SPEC §2.11)."""
    value = request.headers.get("if-match")
    if value is None or value.strip() == "*":
        return None
    match = STRONG_ETAG.match(value.strip())
    if not match:
        raise InvalidRequest(details=[FieldError("If-Match", 'must be one strong ETag such as "7", or *')])
    return int(match.group(1))


async def authenticate(request: Request[Any, Any, Any], deps: ApiDeps) -> Principal:
    """SPEC §2.5 steps 1–6, then the per-user rate limit (step 7)."""
    try:
        principal = await deps.authenticator.authenticate(request.headers.get("authorization"))
    except DomainError:
        # A request whose authentication failed counts against the `ip` window (SPEC §7.4).
        await deps.limits(request, [("ip", state_of(request)["client_ip"] or "unknown")])
        raise
    state_of(request)["principal"] = principal
    await deps.limits.authenticated(request, principal.actor)
    return principal


def client(request: Request[Any, Any, Any]) -> tuple[str | None, str | None]:
    agent = request.headers.get("user-agent")
    return state_of(request)["client_ip"], agent[:512] if agent else None
