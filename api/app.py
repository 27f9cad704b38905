"""The public HTTP listener (Litestar app factory)."""

from __future__ import annotations

from litestar import Litestar
from litestar.di import Provide

from api.errors import EXCEPTION_HANDLERS
from api.system import Readiness, health, ready


def create_public_app(readiness: Readiness) -> Litestar:
    """The app served on SERVER_PORT; later issues add the /api/v1 routes."""
    return Litestar(
        route_handlers=[health, ready],
        dependencies={"readiness": Provide(lambda: readiness, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=None,
    )
