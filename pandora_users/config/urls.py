"""URL helpers for configuration: syntax checks and the database/Redis URLs built from their parts."""

from __future__ import annotations

import ipaddress
from urllib.parse import parse_qs, quote, unquote, urlsplit

STRONG_SSLMODES = frozenset({"require", "verify-ca", "verify-full"})


def http_url_problem(url: str, *, https_only: bool) -> str | None:
    """Why `url` is not an absolute http(s) URL with a host (or not https when required), or None."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http:// or https:// URL"
    if https_only and parts.scheme != "https":
        return "must use https in prod"
    return None


def is_local_host(host: str) -> bool:
    """True for a Unix-socket directory, `localhost` or a loopback address (no name resolution)."""
    if not host or host.startswith("/") or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def postgres_url_hosts_and_sslmode(url: str) -> tuple[list[str], str]:
    """The hosts a PostgreSQL URL connects to (several for a multi-host URL) and its `sslmode`.

    libpq's default `sslmode` is `prefer`; a host given as `?host=/dir` is a Unix socket.
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    sslmode = query.get("sslmode", ["prefer"])[-1]
    netloc = parts.netloc.rpartition("@")[2]
    hosts: list[str] = []
    for entry in netloc.split(","):
        host = entry[1 : entry.find("]")] if entry.startswith("[") else entry.partition(":")[0]
        hosts.append(unquote(host))
    for value in query.get("host", []):
        hosts.extend(value.split(","))
    hosts = [h for h in hosts if h]
    return hosts or [""], sslmode


def postgres_url_problem(url: str) -> str | None:
    """Why `url` is not a usable PostgreSQL URL, or None. The URL is never echoed (it may hold a password)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("postgres", "postgresql"):
        return "must be a postgres:// or postgresql:// URL"
    return None


def redis_url_problem(url: str) -> str | None:
    """Why `url` is not a usable Redis URL, or None (never echoing it)."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("redis", "rediss"):
        return "must be a redis:// or rediss:// URL"
    return None


def build_postgres_url(*, host: str, port: int, user: str, password: str | None, name: str, sslmode: str) -> str:
    """A `postgresql://` URL from `DB_*` parts; a host starting with `/` is a Unix-socket directory."""
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    query = f"sslmode={quote(sslmode)}"
    if host.startswith("/"):
        location = ""
        query += f"&host={quote(host, safe='/')}&port={port}"
    else:
        location = f"{_bracketed(host)}:{port}"
    return f"postgresql://{auth}@{location}/{quote(name, safe='')}?{query}"


def build_redis_url(*, host: str, port: int, password: str | None, db: int) -> str:
    """A `redis://` URL from `REDIS_*` parts."""
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{_bracketed(host)}:{port}/{db}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
