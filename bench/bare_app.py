"""The bare-framework reference of `just bench`: one Litestar JSON endpoint and nothing else.

Served by uvicorn (uvloop, httptools) and by granian with the service's worker count, it shows what the
HTTP stack alone can do on this machine: GET /users/me and refresh are compared to it.

    .venv/bin/uvicorn bare_app:app --workers 2 --loop uvloop --http httptools   (from bench/)
"""

from __future__ import annotations

import msgspec
from litestar import Litestar, get


class Status(msgspec.Struct, frozen=True):
    status: str


@get("/health")
async def health() -> Status:
    return Status(status="healthy")


app = Litestar(route_handlers=[health], openapi_config=None, logging_config=None, debug=False)
