"""The HTTP listeners (Litestar app factories): the public API on SERVER_PORT."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from litestar import Litestar, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from api.deps import ApiDeps
from api.edge import EdgeConfig, EdgeMiddleware
from api.errors import EXCEPTION_HANDLERS
from api.routes.auth import AuthController
from api.routes.me import MeController
from api.swagger import openapi_document, swagger_asset, swagger_initializer, swagger_page
from api.system import Readiness, health, ready
from pandora_users import __version__
from pandora_users.security.keys import jwks


@get("/.well-known/jwks.json", tags=["system"], sync_to_thread=False)
def jwks_endpoint(deps: ApiDeps) -> Response[dict[str, Any]]:
    """Public keys of every signing key that is not retired (none with HS256)."""
    return Response(jwks(deps.tokens.keyring.current), headers={"Cache-Control": "public, max-age=300"})


def openapi(title: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title=title,
        version=__version__,
        path="/_openapi",
        render_plugins=[],
        enabled_endpoints=set(),
        components=Components(
            security_schemes={"bearerAuth": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}
        ),
    )


def wrap(app: Any, edge: EdgeConfig, layers: Sequence[Callable[[Any], Any]] = ()) -> Any:
    """The ASGI stack around a listener's app, outermost first: the edge middleware, then `layers`.

    It wraps the whole app (not per route), so it also sees unknown paths, preflights and framework errors.
    """
    for layer in reversed(layers):
        app = layer(app)
    return EdgeMiddleware(app, edge)


def create_public_app(deps: ApiDeps, readiness: Readiness, *, max_body: int) -> Litestar:
    """The Litestar app of SERVER_PORT (wrap it with `wrap`)."""
    return Litestar(
        route_handlers=[
            AuthController,
            MeController,
            health,
            ready,
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
        state=State({"deps": deps}),
        exception_handlers=EXCEPTION_HANDLERS,
        logging_config=None,
        openapi_config=openapi("pandora-users public API"),
        request_max_body_size=max_body,
    )
