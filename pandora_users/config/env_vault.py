"""SPEC §10.1 section "Vault": whether and how to reach Vault, and where the secrets live (§10.3)."""

from __future__ import annotations

from typing import Any

from pandora_users.config.reader import EnvReader
from pandora_users.config.secret import Secret
from pandora_users.config.urls import http_url_problem

DEFAULT_SECRET_PATH = "secret/data/pandora/user-service"  # noqa: S105 - a path, not a secret
VAULT_VARIABLES = (
    "VAULT_ENABLED",
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "VAULT_TOKEN_FILE",
    "VAULT_SECRET_PATH",
    "VAULT_REFRESH_INTERVAL",
)


def split_secret_path(path: str) -> tuple[str, str]:
    """Split a KV v2 path into (mount, base): `secret/data/pandora/x` → (`secret`, `pandora/x`).

    The first segment is the mount; a `data` segment right after it is the KV v2 API prefix, not part of the
    secret's name. Raises `ValueError` for an empty path or an empty or `.`/`..` segment.
    """
    segments = path.strip("/").split("/")
    if not segments[0] or any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"must be a KV v2 path such as {DEFAULT_SECRET_PATH} (got {path!r})")
    mount, rest = segments[0], segments[1:]
    if rest and rest[0] == "data":
        rest = rest[1:]
    return mount, "/".join(rest)


def vault(r: EnvReader, app_env: str) -> dict[str, Any]:
    """The Vault settings; the token is read from `VAULT_TOKEN_FILE` only when Vault is enabled."""
    enabled = r.boolean("VAULT_ENABLED", False)
    addr = r.text("VAULT_ADDR", "http://localhost:8200").rstrip("/")
    path = r.text("VAULT_SECRET_PATH", DEFAULT_SECRET_PATH)
    token_file = r.path("VAULT_TOKEN_FILE")
    fields: dict[str, Any] = {
        "vault_enabled": enabled,
        "vault_addr": addr,
        "vault_token": _token(r) if enabled else r.secret("VAULT_TOKEN"),
        "vault_token_file": token_file,
        "vault_secret_path": path,
        "vault_refresh_interval": r.duration("VAULT_REFRESH_INTERVAL", "5m", low=1),
    }
    try:
        split_secret_path(path)
    except ValueError as exc:
        r.problem("VAULT_SECRET_PATH", str(exc))
    if enabled:
        if problem := http_url_problem(addr, https_only=app_env == "prod"):
            r.problem("VAULT_ADDR", f"{problem} (got {addr!r})")
        if fields["vault_token"] is None and r.ok("VAULT_TOKEN_FILE"):
            r.problem("VAULT_TOKEN", "VAULT_TOKEN or VAULT_TOKEN_FILE is required when VAULT_ENABLED=true")
    return fields


def _token(r: EnvReader) -> Secret[str] | None:
    token = r.optional("VAULT_TOKEN")
    if token is not None:
        return Secret(token)
    content = r.read_file("VAULT_TOKEN_FILE")
    if content is None:
        return None
    text = token_from_file_content(content)
    if text is None:
        r.problem("VAULT_TOKEN_FILE", "does not hold a token (empty or not UTF-8)")
        return None
    return Secret(text)


def token_from_file_content(content: bytes) -> str | None:
    """The token in a token file (surrounding whitespace removed), or None when there is none."""
    try:
        text = content.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return text or None
