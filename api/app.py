"""The HTTP listeners (Litestar app factories): the public API on SERVER_PORT."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from api.body import UnsupportedMediaType, decode, is_json_content_type, parse_object
from api.deps import ApiDeps
from api.edge import EdgeConfig, EdgeMiddleware
from api.errors import EXCEPTION_HANDLERS
from api.routes.auth import AuthController
from api.routes.me import MeController
from api.swagger import openapi_document, swagger_asset, swagger_initializer, swagger_page
from api.system import Readiness, health, ready
from pandora_users import __version__
from pandora_users.domain.errors import DomainError, InvalidRequest
from pandora_users.security.keys import jwks

IGNORES_BODY = frozenset({"/api/v1/users/me/logout-all"})
LOGIN_PATHS = frozenset({"/api/v1/auth/login", "/api/v1/admin/auth/login"})


async def strict_body(request: Request[Any, Any, Any]) -> None:
    """Decode and check the body before the framework does (SPEC §2.1); see api/body.py.

    A request refused for its body was never authenticated, so it counts against the `ip` window (SPEC §7.4).
    """
    if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return
    try:
        await _check_body(request)
    except (DomainError, HTTPException):
        deps: ApiDeps | None = request.app.state.get("deps")
        if deps is not None:
            await deps.limits(request, [("ip", request.state.client_ip or "unknown")])
        raise


async def _check_body(request: Request[Any, Any, Any]) -> None:
    param = request.route_handler.parsed_fn_signature.parameters.get("data")
    raw = await request.body()
    if param is None:
        if raw and request.url.path not in IGNORES_BODY:
            if not is_json_content_type(request.headers.get("content-type")):
                raise UnsupportedMediaType()
            if parse_object(raw):
                raise InvalidRequest("this endpoint takes no request body (or {})")
        return
    exempt = frozenset({"password"}) if request.url.path in LOGIN_PATHS else frozenset()
    request.state.body = decode(raw, request.headers.get("content-type"), param.annotation, nul_exempt=exempt)


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
        before_request=strict_body,
        state=State({"deps": deps}),
        exception_handlers=EXCEPTION_HANDLERS,
        logging_config=None,
        openapi_config=openapi("pandora-users public API"),
        request_max_body_size=max_body,
    )
