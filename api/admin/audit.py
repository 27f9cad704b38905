"""The auditor's reads (SPEC §4.4): statistics, the global event log and the access log."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get

from api.admin import params as p
from api.admin.common import admin_read, read_response
from api.admin.docs import CONSISTENCY, CONSISTENCY_TOKEN, admin_docs
from api.admin.schemas import AccessLogPage, EventLog, Stats
from api.deps import ApiDeps
from projections.queries.access_log import AccessLogFilters, access_log
from projections.queries.events import global_events
from projections.queries.pagination import PageRequest
from projections.queries.users import active_sessions, user_stats

Q = p.Q


def _read() -> dict[str, Any]:
    return admin_docs("GET", headers=[CONSISTENCY], parameters=[CONSISTENCY_TOKEN])


class AdminAuditController(Controller):
    path = "/"
    tags = ["admin: audit"]

    @get("/stats", summary="User counts (live, deleted, by KYC status and role) and live sessions", **_read())
    async def stats(self, request: Request[Any, Any, Any], deps: ApiDeps) -> Response[Stats]:
        _, reached = await admin_read(request, deps, ("users",))
        counts = await user_stats(deps.pool)
        idle = deps.write.config.session_idle_timeout
        counts["active_sessions"] = await active_sessions(deps.pool, idle_timeout=idle)
        return read_response(msgspec.convert(counts, Stats), reached)

    @get(
        "/events",
        summary="The global log of published events, ascending by position",
        description="To tail it, call again with `after_position` = `next_after_position`. "
        "`head_position` is the highest position in the store.",
        **_read(),
    )
    async def events(
        self,
        request: Request[Any, Any, Any],
        deps: ApiDeps,
        after_position: Q = p.AFTER_POSITION,
        limit: Q = p.LIMIT,
        type_: Q = p.TYPES,
        user_id: Q = p.USER_ID,
        actor_id: Q = p.ACTOR_ID,
        from_: Q = p.FROM,
        to: Q = p.TO,
    ) -> Response[EventLog]:
        _, reached = await admin_read(request, deps, ("event_log",))
        found = await global_events(
            deps.pool,
            deps.store,
            after_position=p.parse_count(after_position, "after_position", 0),
            limit=PageRequest.parse(limit).limit,
            types=type_,
            user_id=p.parse_optional_id(user_id, "user_id"),
            actor_id=actor_id,
            from_=p.parse_instant(from_, "from"),
            to=p.parse_instant(to, "to"),
        )
        return read_response(msgspec.convert(found, EventLog), reached)

    @get("/access-log", summary="Request-level entries (SPEC §9.3), newest first; filters combine with AND", **_read())
    async def access_log(
        self,
        request: Request[Any, Any, Any],
        deps: ApiDeps,
        limit: Q = p.LIMIT,
        offset: Q = p.OFFSET,
        cursor: Q = p.CURSOR,
        from_: Q = p.FROM,
        to: Q = p.TO,
        user_id: Q = p.USER_ID,
        actor_id: Q = p.ACTOR_ID,
        event_type: Q = p.EVENT_TYPE,
        category: Q = p.CATEGORY,
        severity: Q = p.SEVERITY,
        status: Q = p.STATUS,
        ip_address: Q = p.IP_ADDRESS,
        request_id: Q = p.REQUEST_ID,
    ) -> Response[AccessLogPage]:
        # Erasure scrubs the access log in the users projection, so a read after an erase waits for it.
        _, reached = await admin_read(request, deps, ("users",))
        filters = AccessLogFilters(
            from_=p.parse_instant(from_, "from"),
            to=p.parse_instant(to, "to"),
            user_id=p.parse_optional_id(user_id, "user_id"),
            actor_id=actor_id,
            event_type=event_type,
            category=category,
            severity=severity,
            status=status,
            ip_address=ip_address,
            request_id=request_id,
        )
        found = await access_log(deps.pool, filters, PageRequest.parse(limit, offset, cursor))
        return read_response(msgspec.convert(found, AccessLogPage), reached)
