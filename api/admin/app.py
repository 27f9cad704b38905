"""The admin listener's Litestar app and its ASGI stack."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Response, get
from litestar.datastructures import State
from litestar.di import Provide

from api.app import jwks_endpoint, openapi
from api.body import strict_body
from api.deps import ApiDeps
from api.errors import EXCEPTION_HANDLERS
from api.swagger import openapi_document, swagger_asset, swagger_initializer, swagger_page
from api.system import Readiness, health, ready
from pandora_users.observability.metrics import exposition
from projections.gauges import refresh_gauges


@get("/metrics", include_in_schema=False)
async def metrics(deps: ApiDeps) -> Response[bytes]:
    """Prometheus text format (no authentication; the admin listener is internal only)."""
    await refresh_gauges(deps.pool)
    body, content_type = exposition()
    return Response(body, media_type=content_type)


def create_admin_app(
    deps: ApiDeps, readiness: Readiness, *, max_body: int, routes: list[Any] | None = None
) -> Litestar:
    """The Litestar app of ADMIN_PORT; `routes` are the /api/v1/admin controllers."""
    return Litestar(
        route_handlers=[
            *(routes or []),
            health,
            ready,
            metrics,
            jwks_endpoint,
            openapi_document,
            swagger_page,
            swagger_initializer,
            swagger_asset,
        ],
        dependencies={
            "deps": Provide(lambda: deps, sync_to_thread=False, use_cache=True),
            "readiness": Provide(lambda: readiness, sync_to_thread=False, use_cache=True),
        },
        before_request=strict_body,
        state=State({"deps": deps}),
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=openapi("pandora-users admin API"),
        request_max_body_size=max_body,
        logging_config=None,
    )
