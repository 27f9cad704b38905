"""SPEC §10.1 section "gRPC, HTTP edge": service tokens, gRPC TLS, trusted proxies, CORS origins."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from pandora_users.config.profiles import PROFILES, is_dev_like
from pandora_users.config.reader import EnvReader
from pandora_users.config.secret import Secret

# The RPCs of `UserService` (SPEC §5.1) that a service token may be restricted to.
KNOWN_RPCS = frozenset(
    {
        "GetUser",
        "GetUserByEmail",
        "UpdateKYCStatus",
        "ValidateUser",
        "ListUsers",
        "GetUserHistory",
        "StreamEvents",
        "IntrospectToken",
    }
)
_NAME = re.compile(r"[a-z0-9-]{1,64}")
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{32,}")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?|[0-9a-f:.]+")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ServiceToken(msgspec.Struct, frozen=True):
    """One `SERVICE_TOKENS` entry; `allowed_rpcs` None means every RPC."""

    name: str
    token: Secret[str]
    allowed_rpcs: frozenset[str] | None = None


def parse_service_tokens(text: str) -> tuple[tuple[ServiceToken, ...], list[str]]:
    """Parse `name:token[:Rpc1|Rpc2],…`; returns the entries and the problems (never echoing a token)."""
    entries: list[ServiceToken] = []
    problems: list[str] = []
    for number, raw in enumerate(text.split(","), start=1):
        entry, entry_problems = _service_token(raw.strip(), number)
        problems.extend(entry_problems)
        if entry is not None:
            entries.append(entry)
    seen: dict[str, ServiceToken] = {}
    for entry in entries:
        if entry.name in seen:
            problems.append(f"the name {entry.name!r} is used more than once")
        elif any(other.token == entry.token for other in seen.values()):
            problems.append(f"{entry.name!r} uses the same token as another entry")
        seen.setdefault(entry.name, entry)
    return tuple(entries), problems


def _service_token(entry: str, number: int) -> tuple[ServiceToken | None, list[str]]:
    parts = entry.split(":")
    if len(parts) not in (2, 3):
        return None, [f"entry {number} must be name:token or name:token:Rpc1|Rpc2"]
    name, token = parts[0], parts[1]
    label = f"entry {number} ({name})" if _NAME.fullmatch(name) else f"entry {number}"
    problems: list[str] = []
    if not _NAME.fullmatch(name):
        problems.append(f"{label}: the name must match ^[a-z0-9-]{{1,64}}$")
    if not _TOKEN.fullmatch(token):
        problems.append(f"{label}: the token must have at least 32 characters from A-Za-z0-9._~+/=-")
    rpcs: frozenset[str] | None = None
    if len(parts) == 3:
        rpcs = frozenset(parts[2].split("|"))
        unknown = sorted(rpc for rpc in rpcs if rpc not in KNOWN_RPCS)
        if unknown:
            known = ", ".join(sorted(KNOWN_RPCS))
            problems.append(f"{label}: unknown RPC {', '.join(map(repr, unknown))}; known: {known}")
    if problems:
        return None, problems
    return ServiceToken(name=name, token=Secret(token), allowed_rpcs=rpcs), []


def edge(r: EnvReader, app_env: str) -> dict[str, Any]:
    """Service tokens, gRPC TLS and reflection, trusted proxies, CORS origins."""
    return {
        "service_tokens": _service_tokens(r, app_env),
        **_grpc_tls(r),
        "grpc_reflection": r.boolean("GRPC_REFLECTION", PROFILES[app_env].grpc_reflection),
        "trusted_proxies": _trusted_proxies(r),
        "cors_allowed_origins": _origins(r, "CORS_ALLOWED_ORIGINS", app_env),
        "admin_cors_allowed_origins": _origins(r, "ADMIN_CORS_ALLOWED_ORIGINS", app_env),
    }


def _service_tokens(r: EnvReader, app_env: str) -> tuple[ServiceToken, ...]:
    text = r.raw("SERVICE_TOKENS")
    if text is None:  # required outside dev/test: checked with the other required values
        if app_env == "dev":
            r.warn("SERVICE_TOKENS", "is empty: every gRPC call is accepted without a service token")
        return ()
    entries, problems = parse_service_tokens(text)
    for problem in problems:
        r.problem("SERVICE_TOKENS", problem)
    return entries


def _grpc_tls(r: EnvReader) -> dict[str, Any]:
    cert, key, ca = (r.path(n) for n in ("GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE", "GRPC_TLS_CLIENT_CA_FILE"))
    if cert is not None and key is None:
        r.problem("GRPC_TLS_KEY_FILE", "is required with GRPC_TLS_CERT_FILE")
    if key is not None and cert is None:
        r.problem("GRPC_TLS_CERT_FILE", "is required with GRPC_TLS_KEY_FILE")
    if ca is not None and (cert is None or key is None):
        r.problem("GRPC_TLS_CLIENT_CA_FILE", "requires GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE")
    _check_pem(r, "GRPC_TLS_CERT_FILE", _certificates_problem)
    _check_pem(r, "GRPC_TLS_KEY_FILE", _private_key_problem)
    _check_pem(r, "GRPC_TLS_CLIENT_CA_FILE", _certificates_problem)
    return {"grpc_tls_cert_file": cert, "grpc_tls_key_file": key, "grpc_tls_client_ca_file": ca}


def _check_pem(r: EnvReader, name: str, problem_of: Callable[[bytes], str | None]) -> None:
    content = r.read_file(name)
    if content is not None and (problem := problem_of(content)):
        r.problem(name, problem)


def _certificates_problem(content: bytes) -> str | None:
    try:
        x509.load_pem_x509_certificates(content)
    except ValueError:
        return "is not a PEM certificate file"
    return None


def _private_key_problem(content: bytes) -> str | None:
    try:
        load_pem_private_key(content, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "is not an unencrypted PEM private key"
    return None


def _trusted_proxies(r: EnvReader) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for entry in _items(r.raw("TRUSTED_PROXIES")):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            r.problem("TRUSTED_PROXIES", f"{entry!r} is not an IP address or CIDR range")
    return tuple(networks)


def _origins(r: EnvReader, name: str, app_env: str) -> tuple[str, ...]:
    origins: list[str] = []
    for entry in _items(r.raw(name)):
        if entry == "*":
            if not is_dev_like(app_env):
                r.problem(name, f"'*' is allowed only in dev and test, not in {app_env}")
            origins.append(entry)
            continue
        origin = normalize_origin(entry)
        if origin is None:
            r.problem(name, f"{entry!r} is not an origin of the form scheme://host[:port]")
        else:
            origins.append(origin)
    return tuple(dict.fromkeys(origins))


def normalize_origin(text: str) -> str | None:
    """`scheme://host[:port]` in lower case without a default port, or None when `text` is not an origin."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.path or parts.query or parts.fragment:
        return None
    if parts.username is not None or parts.password is not None or "#" in text or "?" in text:
        return None
    if not _HOST.fullmatch(host):
        return None
    if ":" in host:
        host = f"[{host}]"
    suffix = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{suffix}"


def _items(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]
