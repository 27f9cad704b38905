"""Swagger UI served from the service itself (SPEC §3.4): no CDN, no inline script (CSP `default-src 'self'`)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title}</title>
  <link rel="stylesheet" href="/swagger/swagger-ui.css">
  <link rel="icon" type="image/png" href="/swagger/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/swagger/swagger-ui-bundle.js"></script>
  <script src="/swagger/swagger-ui-standalone-preset.js"></script>
  <script src="/swagger/initializer.js"></script>
</body>
</html>
"""
INITIALIZER = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout"
  });
};
"""


@functools.cache
def _static_dir() -> Path:
    import swagger_ui

    return Path(swagger_ui.__file__).parent / "static"


@functools.cache
def _asset(name: str) -> bytes:
    return (_static_dir() / name).read_bytes()


@get(["/swagger", "/swagger/index.html"], include_in_schema=False, sync_to_thread=False)
def swagger_page(request: Request[Any, Any, Any]) -> Response[str]:
    title = request.app.openapi_config.title if request.app.openapi_config else "API"
    return Response(PAGE.format(title=title), media_type="text/html")


@get("/swagger/initializer.js", include_in_schema=False, sync_to_thread=False)
def swagger_initializer() -> Response[str]:
    return Response(INITIALIZER, media_type="text/javascript")


@get("/swagger/{name:str}", include_in_schema=False, sync_to_thread=False)
def swagger_asset(name: str) -> Response[bytes]:
    if name not in ASSETS:
        raise NotFoundException()
    return Response(_asset(name), media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})


@get("/openapi.json", include_in_schema=False, sync_to_thread=False)
def openapi_document(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """The OpenAPI 3.1 document of this listener (built once)."""
    state = request.app.state
    if "openapi_document" not in state:
        state["openapi_document"] = strict_request_bodies(request.app.openapi_schema.to_schema())
    return Response(state["openapi_document"])


def strict_request_bodies(document: dict[str, Any]) -> dict[str, Any]:
    """Mark every request-body schema `additionalProperties: false`: unknown fields are refused (SPEC §2.1).

    The bodies are msgspec structs with `forbid_unknown_fields`, which Litestar does not carry into the schema.
    """
    schemas = document.get("components", {}).get("schemas", {})
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                ref = media.get("schema", {}).get("$ref", "")
                name = ref.removeprefix("#/components/schemas/")
                if name in schemas and schemas[name].get("type") == "object":
                    schemas[name]["additionalProperties"] = False
    return document
