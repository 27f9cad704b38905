"""OpenAPI documentation of the admin routes (SPEC §4), on the public routes' machinery (api/openapi_docs.py).

`admin_docs(...)` gives a route decorator's keyword arguments: the error responses (ErrorResponse narrowed to
the codes each status can carry), `bearerAuth`, the request and response headers, and optional bodies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from litestar.datastructures import ResponseHeader
from litestar.openapi.spec import Operation, Parameter, RequestBody, Schema

from api.openapi_docs import (
    BEARER,
    CONSISTENCY,
    CONSISTENCY_TOKEN,
    ETAG,
    EVERY,
    IDEMPOTENCY_KEY,
    IDEMPOTENT,
    IF_MATCH,
    REPLAY,
    REQUEST_ID,
    WITH_BODY,
    DocumentedOperation,
    errors,
)
from pandora_users.domain.errors import ERROR_TABLE

# Every admin-only endpoint can also answer these (SPEC §2.5: a public-audience or non-admin token is 403).
ADMIN = ("unauthorized", "forbidden")
__all__ = ["CONSISTENCY", "CONSISTENCY_TOKEN", "ETAG", "IF_MATCH", "OptionalBody", "admin_docs"]


@dataclass
class OptionalBody(Operation):
    """An operation whose JSON body may be left out (delete, restore, unlock, session revocation)."""

    def __post_init__(self) -> None:
        body = self.request_body
        if isinstance(body, RequestBody):
            body.required = False
            for media in body.content.values():
                schema: Any = media.schema
                if isinstance(schema, Schema) and schema.one_of:  # `X | None`: document X alone
                    kept = [s for s in schema.one_of if not (isinstance(s, Schema) and s.type is not None)]
                    media.schema = kept[0] if len(kept) == 1 else schema
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


def admin_docs(
    method: str,
    *specific: str,
    auth: bool = True,
    headers: Sequence[ResponseHeader] = (),
    parameters: Sequence[Parameter] = (),
    optional_body: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for an admin route decorator; `specific` are the endpoint's own error codes (§4)."""
    codes = [*EVERY, *(WITH_BODY if method != "GET" else ()), *(IDEMPOTENT if method == "POST" else ())]
    codes += [*(ADMIN if auth else ()), *specific]
    unique = tuple(dict.fromkeys(codes))
    by_status: dict[int, tuple[str, ...]] = {}
    for code in unique:
        by_status[ERROR_TABLE[code][0]] = (*by_status.get(ERROR_TABLE[code][0], ()), code)
    extra = (*parameters, *((IDEMPOTENCY_KEY,) if method == "POST" else ()), REQUEST_ID)
    bases = (OptionalBody, DocumentedOperation) if optional_body else (DocumentedOperation,)
    operation = type("AdminOperation", bases, {"codes": by_status, "extra_parameters": extra})
    return {
        "responses": errors(*unique),
        "security": BEARER if auth else None,
        "response_headers": [*headers, *((REPLAY,) if method == "POST" else ())],
        "operation_class": operation,
    }
