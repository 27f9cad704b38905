"""SPEC §10.1 sections: tokens and sessions, password hashing, lockout, rate limits, links, data keys."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from pandora_users.config.durations import format_duration
from pandora_users.config.env_general import usable_cpus
from pandora_users.config.jwt_keys import is_valid_kid, keys_dir_problems, pem_problem
from pandora_users.config.profiles import is_dev_like
from pandora_users.config.reader import EnvReader
from pandora_users.config.secret import Secret
from pandora_users.config.urls import http_url_problem

HOUR = 3600.0
MIN_SECRET_LENGTH = 32


def tokens(r: EnvReader, app_env: str) -> dict[str, Any]:
    """JWT signing, token lifetimes and session limits."""
    algorithm = r.choice("JWT_ALGORITHM", "EdDSA", ("EdDSA", "HS256"))
    fields: dict[str, Any] = {
        "jwt_algorithm": algorithm,
        "jwt_secret": r.secret("JWT_SECRET"),
        "jwt_private_key": _private_key(r),
        "jwt_kid": r.optional("JWT_KID") or ("static-v1" if algorithm == "HS256" else None),
        "jwt_keys_dir": r.path("JWT_KEYS_DIR"),
        "jwt_issuer": r.text("JWT_ISSUER", "pandora-exchange"),
        "jwt_access_token_expiry": r.duration("JWT_ACCESS_TOKEN_EXPIRY", "15m", low=1),
        "jwt_refresh_token_expiry": r.duration("JWT_REFRESH_TOKEN_EXPIRY", "168h", positive=True, high=2160 * HOUR),
        "session_max_per_user": r.integer("SESSION_MAX_PER_USER", 50, 1, 1000),
        "session_idle_timeout": r.duration("SESSION_IDLE_TIMEOUT", "0", low=1, zero_ok=True),
        "session_record_retention": r.duration("SESSION_RECORD_RETENTION", "720h", positive=True),
    }
    if fields["jwt_kid"] is not None and not is_valid_kid(fields["jwt_kid"]):
        r.problem("JWT_KID", f"must match ^[A-Za-z0-9._-]{{1,64}}$ (got {fields['jwt_kid']!r})")
    _check_signing_inputs(r, app_env, fields)
    _check_lifetimes(r, fields)
    return fields


def _private_key(r: EnvReader) -> Secret[str] | None:
    pem = r.raw("JWT_PRIVATE_KEY")
    if pem is None:
        return None
    if "\n" not in pem and "\\n" in pem:  # a PEM squeezed onto one line with escaped newlines
        pem = pem.replace("\\n", "\n")
    if problem := pem_problem(pem):
        r.problem("JWT_PRIVATE_KEY", problem)
    return Secret(pem)


def _check_signing_inputs(r: EnvReader, app_env: str, fields: dict[str, Any]) -> None:
    secret: Secret[str] | None = fields["jwt_secret"]
    if fields["jwt_algorithm"] == "HS256":
        if secret is None:
            r.problem("JWT_SECRET", "is required when JWT_ALGORITHM=HS256")
        elif len(secret.get()) < MIN_SECRET_LENGTH:
            r.problem("JWT_SECRET", f"must be at least {MIN_SECRET_LENGTH} characters long with HS256")
        if not is_dev_like(app_env):
            r.warn("JWT_ALGORITHM", f"HS256 is in use in {app_env}; EdDSA is recommended")
    if fields["jwt_private_key"] is not None and fields["jwt_keys_dir"] is not None:
        r.problem("JWT_PRIVATE_KEY", "must not be set together with JWT_KEYS_DIR")
    if fields["jwt_keys_dir"] is not None:
        for problem in keys_dir_problems(fields["jwt_keys_dir"]):
            r.problem("JWT_KEYS_DIR", problem)


def _check_lifetimes(r: EnvReader, fields: dict[str, Any]) -> None:
    access, refresh = fields["jwt_access_token_expiry"], fields["jwt_refresh_token_expiry"]
    retention = fields["session_record_retention"]
    if r.ok("JWT_ACCESS_TOKEN_EXPIRY", "JWT_REFRESH_TOKEN_EXPIRY") and access >= refresh:
        shown = f"{format_duration(access)} ≥ {format_duration(refresh)}"
        r.problem("JWT_ACCESS_TOKEN_EXPIRY", f"must be shorter than JWT_REFRESH_TOKEN_EXPIRY ({shown})")
    if r.ok("SESSION_RECORD_RETENTION", "JWT_REFRESH_TOKEN_EXPIRY") and retention < refresh:
        shown = f"{format_duration(retention)} < {format_duration(refresh)}"
        r.problem("SESSION_RECORD_RETENTION", f"must be at least JWT_REFRESH_TOKEN_EXPIRY ({shown})")


def passwords(r: EnvReader) -> dict[str, Any]:
    """Argon2 parameters and its worker pool, password policy, lockout.

    The pool defaults to the usable cores in every process (SPEC §10.1), HTTP workers included: connections do
    not spread evenly over the workers, and a worker holding most of them must still be able to use every core.
    """
    cpus = min(usable_cpus(), 64)
    concurrency = r.integer("ARGON2_MAX_CONCURRENCY", cpus, 1, 64)
    minimum = r.integer("PASSWORD_MIN_LENGTH", 8, 8, 64)
    return {
        "argon2_memory_kib": r.integer("ARGON2_MEMORY_KIB", 65536, 8192, 1048576),
        "argon2_time_cost": r.integer("ARGON2_TIME_COST", 1, 1, 10),
        "argon2_parallelism": r.integer("ARGON2_PARALLELISM", 4, 1, 16),
        "argon2_hash_length": r.integer("ARGON2_HASH_LENGTH", 32, 16, 64),
        "argon2_salt_length": r.integer("ARGON2_SALT_LENGTH", 16, 16, 64),
        "argon2_max_concurrency": concurrency,
        "argon2_queue_size": r.integer("ARGON2_QUEUE_SIZE", 2 * concurrency, 0, 10000),
        "argon2_queue_timeout": r.duration("ARGON2_QUEUE_TIMEOUT", "5s", positive=True),
        "password_min_length": minimum,
        "password_max_length": r.integer("PASSWORD_MAX_LENGTH", max(128, minimum), minimum, 256),
        "password_blocklist_file": _blocklist(r),
        "lockout_threshold": r.integer("LOCKOUT_THRESHOLD", 10, 3, 100),
        "lockout_duration": r.duration("LOCKOUT_DURATION", "15m", low=1, high=24 * HOUR),
    }


def _blocklist(r: EnvReader) -> Path | None:
    content = r.read_file("PASSWORD_BLOCKLIST_FILE")
    if content is not None:
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            r.problem("PASSWORD_BLOCKLIST_FILE", "is not valid UTF-8")
    return r.path("PASSWORD_BLOCKLIST_FILE")


_RATE_LIMITS = (
    ("RATE_LIMIT_REQUESTS_PER_WINDOW", 100, "RATE_LIMIT_WINDOW_DURATION", "1m"),
    ("RATE_LIMIT_USER_REQUESTS_PER_WINDOW", 60, None, None),
    ("RATE_LIMIT_LOGIN_REQUESTS", 5, "RATE_LIMIT_LOGIN_WINDOW", "15m"),
    ("RATE_LIMIT_REGISTER_REQUESTS", 10, "RATE_LIMIT_REGISTER_WINDOW", "1h"),
    ("RATE_LIMIT_PASSWORD_RESET_REQUESTS", 5, "RATE_LIMIT_PASSWORD_RESET_WINDOW", "1h"),
    ("RATE_LIMIT_VERIFICATION_REQUESTS", 3, "RATE_LIMIT_VERIFICATION_WINDOW", "1h"),
)


def rate_limits(r: EnvReader, app_env: str) -> dict[str, Any]:
    """Rate-limit switches, counts (≥ 1) and windows (≥ 1 s)."""
    enabled = r.boolean("RATE_LIMIT_ENABLED", True)
    if not enabled and app_env == "prod":
        r.problem("RATE_LIMIT_ENABLED", "must not be false in prod")
    fields: dict[str, Any] = {
        "rate_limit_enabled": enabled,
        "rate_limit_enable_per_user": r.boolean("RATE_LIMIT_ENABLE_PER_USER", True),
    }
    for count, count_default, window, window_default in _RATE_LIMITS:
        fields[count.lower()] = r.integer(count, count_default, 1)
        if window is not None and window_default is not None:
            fields[window.lower()] = r.duration(window, window_default, low=1)
    return fields


def links_and_data(r: EnvReader, app_env: str) -> dict[str, Any]:
    """Link-token lifetimes and URLs, data-protection keys, consistency and idempotency windows."""
    return {
        "email_verification_token_ttl": r.duration("EMAIL_VERIFICATION_TOKEN_TTL", "24h", low=1, high=168 * HOUR),
        "password_reset_token_ttl": r.duration("PASSWORD_RESET_TOKEN_TTL", "1h", low=1, high=24 * HOUR),
        "email_verification_url": _link_url(
            r, "EMAIL_VERIFICATION_URL", "http://localhost:3000/verify-email?token={token}", app_env
        ),
        "password_reset_url": _link_url(
            r, "PASSWORD_RESET_URL", "http://localhost:3000/reset-password?token={token}", app_env
        ),
        "email_verification_required": r.boolean("EMAIL_VERIFICATION_REQUIRED", False),
        "data_encryption_key": _data_encryption_key(r),
        "email_index_key": _email_index_key(r),
        "consistency_wait_timeout": r.duration("CONSISTENCY_WAIT_TIMEOUT", "2s", low=0, high=30),
        "idempotency_ttl": r.duration("IDEMPOTENCY_TTL", "24h", low=1, high=72 * HOUR),
    }


def _link_url(r: EnvReader, name: str, default: str, app_env: str) -> str:
    url = r.text(name, default)
    if "{token}" not in url:
        r.problem(name, "must contain the placeholder {token}")
    elif problem := http_url_problem(url.replace("{token}", "token"), https_only=app_env == "prod"):
        r.problem(name, f"{problem} (got {url!r})")
    return url


def _data_encryption_key(r: EnvReader) -> Secret[bytes] | None:
    text = r.optional("DATA_ENCRYPTION_KEY")
    if text is None:
        return None
    altchars = b"-_" if ("-" in text or "_" in text) else None
    try:
        key = base64.b64decode(text, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        r.problem("DATA_ENCRYPTION_KEY", "must be base64 (of exactly 32 bytes)")
        return None
    if len(key) != 32:
        r.problem("DATA_ENCRYPTION_KEY", f"must decode to exactly 32 bytes (got {len(key)})")
        return None
    return Secret(key)


def _email_index_key(r: EnvReader) -> Secret[str] | None:
    key = r.secret("EMAIL_INDEX_KEY")
    if key is not None and len(key.get()) < MIN_SECRET_LENGTH:
        r.problem("EMAIL_INDEX_KEY", f"must be at least {MIN_SECRET_LENGTH} characters long")
    return key
