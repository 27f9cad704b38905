"""Strict JSON request bodies (SPEC §2.1), checked before the framework decodes anything.

One JSON object, valid UTF-8, no duplicate keys, nesting ≤ 32, no `null` or wrong types, no U+0000 in any
string (except the login `password`, which is never validated), no unknown fields, no coercion.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException

from api.request_state import state_of
from pandora_users.domain.errors import DomainError, FieldError, InvalidRequest

if TYPE_CHECKING:
    from api.deps import ApiDeps

T = TypeVar("T")
MAX_DEPTH = 32
JSON_TYPES = ("application/json",)


class UnsupportedMediaType(DomainError):
    code = "unsupported_media_type"


def is_json_content_type(value: str | None) -> bool:
    """`application/json` or `application/*+json`, parameters (charset=...) allowed."""
    if not value:
        return False
    media = value.split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidRequest(f"duplicate key {key!r} in request body", [FieldError(key, "duplicate key")])
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise InvalidRequest(f"invalid JSON value {name}")


def _check(value: Any, depth: int, path: str, nul_exempt: frozenset[str]) -> None:
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"request body nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value and path not in nul_exempt:
            raise InvalidRequest(details=[FieldError(path or "body", "must not contain U+0000")])
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise InvalidRequest("keys must not contain U+0000")
            _check(item, depth + 1, key if depth == 1 else f"{path}.{key}", nul_exempt)
    elif isinstance(value, list):
        for item in value:
            _check(item, depth + 1, path, nul_exempt)


def parse_object(raw: bytes, *, nul_exempt: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The body as a dict, or `invalid_request` saying what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not valid UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except DomainError:
        raise
    except RecursionError:
        raise InvalidRequest(f"request body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidRequest("request body must be a JSON object")
    _check(value, 1, "", nul_exempt)
    return value


def convert(value: dict[str, Any], cls: type[T]) -> T:
    """Strict conversion into a request struct (no coercion, unknown fields refused)."""
    try:
        return msgspec.convert(value, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(details=[_field_error(str(exc))]) from None


def _field_error(message: str) -> FieldError:
    # msgspec: "Expected `str`, got `int` - at `$.email`" / "Object missing required field `email`"
    # / "Object contains unknown field `role`".
    field = "body"
    if "`$." in message:
        field = message.rsplit("`$.", 1)[1].rstrip("`").split(".")[0].split("[")[0]
    elif "field `" in message:
        field = message.split("field `", 1)[1].split("`", 1)[0]
    text = message.split(" - at ", maxsplit=1)[0]
    if text.startswith("Object missing required field"):
        text = "is required"
    elif text.startswith("Object contains unknown field"):
        text = "unknown field"
    elif text.startswith("Expected"):
        text = "must be " + text.removeprefix("Expected ").split(",")[0].replace("`", "").replace("str", "a string")
    return FieldError(field, text)


def decode(raw: bytes, content_type: str | None, cls: type[T], *, nul_exempt: frozenset[str] = frozenset()) -> T:
    """The whole §2.1 pipeline for one request body."""
    if not raw:
        raise InvalidRequest("request body is required")
    if not is_json_content_type(content_type):
        raise UnsupportedMediaType()
    return convert(parse_object(raw, nul_exempt=nul_exempt), cls)


IGNORES_BODY = frozenset({"/api/v1/users/me/logout-all"})
LOGIN_PATHS = frozenset({"/api/v1/auth/login", "/api/v1/admin/auth/login"})


async def strict_body(request: Request[Any, Any, Any]) -> None:
    """The `before_request` hook that decodes and checks a body before the framework does. The public API sets it
    on each handler that takes a body (POST, PUT, PATCH, DELETE), so its reads pay nothing; the admin API runs it
    for every request (`admin_body`, app-wide), hence the method check.

    A request refused for its body was never authenticated, so it counts against the `ip` window (SPEC §7.4).
    """
    if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return
    try:
        await _check_body(request)
    except (DomainError, HTTPException):
        deps: ApiDeps | None = request.app.state.get("deps")
        if deps is not None:
            await deps.limits(request, [("ip", state_of(request)["client_ip"] or "unknown")])
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
    # Checked only: nothing reads the decoded value, the framework decodes `data` again for the handler.
    decode(raw, request.headers.get("content-type"), param.annotation, nul_exempt=exempt)
