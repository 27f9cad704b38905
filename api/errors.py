"""The one error shape of SPEC §2.6, for domain errors and framework errors alike."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from loguru import logger

from api.request_state import state_of
from pandora_users.domain.errors import ERROR_TABLE, DomainError
from pandora_users.infra.read_pool import DATABASE_OUTAGES
from pandora_users.observability import metrics as m
from pandora_users.observability import tracing

_BY_STATUS = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_body(code: str, message: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"error": code, "message": message or ERROR_TABLE[code][2], "code": code.upper()}
    body.update({k: v for k, v in extra.items() if v is not None})
    trace_id = tracing.current_trace_id()  # the request's server span, when tracing is on (SPEC §2.6)
    if trace_id is not None:
        body.setdefault("trace_id", trace_id)
    return body


def error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[Any]:
    headers = dict(headers or {})
    retry = body.get("retry_after_seconds")
    if retry is not None:
        headers["Retry-After"] = str(retry)
    return Response(content=body, status_code=status, headers=headers, media_type="application/json")


def domain_error_handler(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    state_of(request)["error_code"] = exc.code
    m.errors.labels(exc.code, "http").inc()
    if exc.audit:
        state_of(request)["audit"] = {**state_of(request).get("audit", {}), **exc.audit}
    details = [{"field": d.field, "message": d.message} for d in exc.details] or None
    return error_response(exc.http_status, error_body(exc.code, exc.message, details=details, **exc.extra))


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    code = _BY_STATUS.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "internal_error")
    state_of(request)["error_code"] = code
    return error_response(exc.status_code, error_body(code), dict(exc.headers or {}))


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    state_of(request)["error_code"] = "internal_error"
    m.panics.labels("http").inc()
    logger.opt(exception=exc).error("unhandled error on {} {}", request.method, request.url.path)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, error_body("internal_error"))


def outage_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The database could not be reached (or cut the statement short): 503, try again shortly."""
    state_of(request)["error_code"] = "service_unavailable"
    m.errors.labels("service_unavailable", "http").inc()
    logger.warning("{} {}: database unavailable: {}: {}", request.method, request.url.path, type(exc).__name__, exc)
    return error_response(503, error_body("service_unavailable", retry_after_seconds=1))


EXCEPTION_HANDLERS: Any = {
    DomainError: domain_error_handler,
    HTTPException: http_error_handler,
    **dict.fromkeys(DATABASE_OUTAGES, outage_handler),
    Exception: internal_error_handler,
}
