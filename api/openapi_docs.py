"""OpenAPI documentation of the public routes: the errors each can return, headers, and `bearerAuth` (SPEC §3).

`route_docs(...)` gives the keyword arguments of a route decorator. Each error status is documented with the
`ErrorResponse` schema narrowed to the error codes that route can give at that status, so a schema check of
the responses also proves the error table of SPEC §3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from litestar.datastructures import ResponseHeader
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example, OpenAPIHeader, OpenAPIResponse, Operation, Parameter, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType

from api.errors import error_body
from api.schemas import ErrorResponse, MessageResponse
from pandora_users.domain.errors import ERROR_TABLE

BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]

# SPEC §3: every endpoint can answer these ...
EVERY = ("invalid_request", "rate_limit_exceeded", "internal_error", "service_busy", "service_unavailable")
# ... an endpoint that reads a body (any method but GET) these, every POST these (SPEC §2.12) ...
WITH_BODY = ("payload_too_large", "unsupported_media_type")
IDEMPOTENT = ("invalid_idempotency_key", "request_in_progress", "idempotency_key_reused")
# ... and every authenticated endpoint these (SPEC §2.5).
AUTHENTICATED = ("unauthorized", "user_not_found")

_STRING, _INTEGER = Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.INTEGER)
RATE_LIMIT = {
    "X-RateLimit-Limit": "requests allowed in the most restrictive window that applies (SPEC §7.4)",
    "X-RateLimit-Remaining": "requests left in that window",
    "X-RateLimit-Reset": "Unix time (seconds) when the oldest counted request leaves the window",
}
RETRY_AFTER = OpenAPIHeader(schema=_INTEGER, description="seconds to wait before retrying (≥ 1)")
ETAG = ResponseHeader(name="ETag", documentation_only=True, description='the user\'s version, e.g. `"7"` (SPEC §2.11)')
CONSISTENCY = ResponseHeader(
    name="X-Consistency-Token",
    documentation_only=True,
    description="opaque read-your-writes token: the position written, or the one the read model reached (§2.10)",
)
REPLAY = ResponseHeader(
    name="X-Idempotency-Replay", documentation_only=True, description="`true` when this is a stored replay (§2.12)"
)


# What some codes add to the body (SPEC §2.6), for the examples.
EXAMPLE_EXTRA: dict[str, dict[str, Any]] = {
    "invalid_request": {"details": [{"field": "email", "message": "must be a valid email address"}]},
    "weak_password": {"details": [{"field": "password", "message": "too_short"}]},
    "version_conflict": {"current_version": 7},
    "account_locked": {"retry_after_seconds": 900},
    "rate_limit_exceeded": {"retry_after_seconds": 42},
    "service_busy": {"retry_after_seconds": 1},
}


def _header(name: str, description: str, **schema: Any) -> Parameter:
    return Parameter(
        name=name,
        param_in="header",
        required=False,
        description=description,
        schema=Schema(type=OpenAPIType.STRING, **schema),
    )


# No `pattern`: a request id that does not match `^[A-Za-z0-9._-]{1,128}$` is replaced, not refused.
REQUEST_ID = _header("X-Request-ID", "correlation id, echoed when it matches `^[A-Za-z0-9._-]{1,128}$`")
IDEMPOTENCY_KEY = _header(
    "Idempotency-Key", "replays the first 2xx response of the same key and body (SPEC §2.12)", pattern="^[ -~]{1,255}$"
)
IF_MATCH = _header(
    "If-Match", 'one strong ETag such as `"7"`, or `*` (SPEC §2.11)', pattern='^("(0|[1-9][0-9]*)"|\\*)$'
)
CONSISTENCY_TOKEN = _header("X-Consistency-Token", "wait until the read model has reached this token (SPEC §2.10)")
SESSION_ID = Parameter(
    name="session_id",
    param_in="path",
    required=True,
    description="a session id in canonical UUID form (either case)",
    schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.UUID),
)


@dataclass
class DocumentedOperation(Operation):
    """Adds what the route decorators cannot say: request headers, error headers, narrowed error codes."""

    codes: ClassVar[dict[int, tuple[str, ...]]] = {}
    extra_parameters: ClassVar[tuple[Parameter, ...]] = ()

    def __post_init__(self) -> None:
        replaced = {p.name for p in self.extra_parameters}
        kept = [p for p in self.parameters or [] if getattr(p, "name", None) not in replaced]
        self.parameters = [*kept, *self.extra_parameters] or None
        for status, response in (self.responses or {}).items():
            if isinstance(response, OpenAPIResponse):
                self._document(int(status), response)

    def _document(self, status: int, response: OpenAPIResponse) -> None:
        headers = dict(response.headers or {})
        for header in headers.values():
            if isinstance(header, OpenAPIHeader) and header.schema is None:
                header.schema = _STRING
        if status < 300 or status == 429:
            headers.update(
                {name: OpenAPIHeader(schema=_INTEGER, description=text) for name, text in RATE_LIMIT.items()}
            )
        if status in (409, 423, 429, 503):
            headers["Retry-After"] = RETRY_AFTER
        response.headers = headers or None
        for media in (response.content or {}).values():
            for example in (media.examples or {}).values():
                if isinstance(example, Example):
                    example.id = None  # already the key; Litestar would also emit it as a (non-OpenAPI) field
        codes = self.codes.get(status)
        if codes and response.content:
            narrowed = Schema(properties={"error": Schema(enum=list(codes))})
            for media in response.content.values():
                if media.schema is not None:
                    media.schema = Schema(all_of=[media.schema, narrowed])


def by_status(codes: Sequence[str]) -> dict[int, tuple[str, ...]]:
    """The error codes grouped by their HTTP status (SPEC §2.6), in the order given."""
    grouped: dict[int, tuple[str, ...]] = {}
    for code in dict.fromkeys(codes):
        grouped[ERROR_TABLE[code][0]] = (*grouped.get(ERROR_TABLE[code][0], ()), code)
    return grouped


def errors(*codes: str) -> dict[int, ResponseSpec]:
    """One response per status, in the ErrorResponse shape, with an example of each code."""
    return {
        status: ResponseSpec(
            data_container=ErrorResponse,
            generate_examples=False,
            description=", ".join(f"`{code}`" for code in found),
            examples=[
                Example(id=code, summary=code, value=error_body(code, **EXAMPLE_EXTRA.get(code, {}))) for code in found
            ],
        )
        for status, found in sorted(by_status(codes).items())
    }


def route_docs(
    method: str,
    *specific: str,
    auth: bool = False,
    headers: Sequence[ResponseHeader] = (),
    parameters: Sequence[Parameter] = (),
    also: dict[int, ResponseSpec] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for a route decorator: `responses`, `security`, `response_headers`, `operation_class`.

    `specific` are the error codes of this endpoint in SPEC §3; the ones every endpoint of its kind can give
    are added here. `also` documents further success responses (e.g. a 200 beside the usual 202).
    """
    codes = [*EVERY, *(WITH_BODY if method != "GET" else ()), *(IDEMPOTENT if method == "POST" else ())]
    codes += [*(AUTHENTICATED if auth else ()), *specific]
    extra = (*parameters, *((IDEMPOTENCY_KEY,) if method == "POST" else ()), REQUEST_ID)
    attributes = {"codes": by_status(codes), "extra_parameters": extra}
    return {
        "responses": {**errors(*codes), **(also or {})},
        "security": BEARER if auth else None,
        "response_headers": [*headers, *((REPLAY,) if method == "POST" else ())],
        "operation_class": type("DocumentedOperation", (DocumentedOperation,), attributes),
    }


def message(text: str) -> ResponseSpec:
    """A further success response with a MessageResponse body."""
    return ResponseSpec(
        data_container=MessageResponse,
        generate_examples=False,
        description=text,
        examples=[Example(id="message", value={"message": text})],
    )
