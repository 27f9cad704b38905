"""`Settings`: every variable of SPEC §10.1, after APP_ENV profiles (§10.2), the Vault overlay (§10.3) and
start-up validation (§10.4). Durations are float seconds; secrets are wrapped in `Secret`.

`load_settings` is pure apart from reading the files that variables name (and Vault, when enabled); it
reports every problem at once in a `ConfigError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from pandora_users.config import env_edge, env_general, env_security, env_vault
from pandora_users.config.env_edge import IPNetwork, ServiceToken
from pandora_users.config.errors import ConfigError
from pandora_users.config.jwt_keys import key_set_problems
from pandora_users.config.profiles import APP_ENVS, is_dev_like
from pandora_users.config.reader import EnvReader
from pandora_users.config.secret import Secret
from pandora_users.config.vault import VaultOverlay, VaultSecrets

__all__ = ["ConfigError", "Secret", "ServiceToken", "Settings", "load_settings", "settings_from_env"]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """The validated configuration; built once at start-up and handed down."""

    # General and listeners
    app_env: str
    log_level: str
    log_format: str
    data_dir: Path
    auto_migrate: bool
    server_host: str
    server_port: int
    admin_host: str
    admin_port: int
    grpc_port: int
    max_request_body_bytes: int
    shutdown_timeout: float
    http_workers: int
    metrics_port: int | None
    # PostgreSQL (URLs are secrets: they may carry a password)
    database_url: Secret[str] | None
    db_host: str | None
    db_port: int
    db_user: str | None
    db_password: Secret[str] | None
    db_name: str | None
    db_sslmode: str
    db_pool_min: int
    db_pool_max: int
    db_statement_timeout: float
    db_lock_timeout: float
    # Redis
    redis_url: Secret[str] | None
    redis_host: str
    redis_port: int
    redis_password: Secret[str] | None
    redis_db: int
    redis_key_prefix: str
    # Tokens and sessions
    jwt_algorithm: str
    jwt_secret: Secret[str] | None
    jwt_private_key: Secret[str] | None
    jwt_kid: str | None  # None with EdDSA: the RFC 7638 thumbprint of the key
    jwt_keys_dir: Path | None
    jwt_issuer: str
    jwt_access_token_expiry: float
    jwt_refresh_token_expiry: float
    session_max_per_user: int
    session_idle_timeout: float
    session_record_retention: float
    # Passwords, hashing, lockout
    argon2_memory_kib: int
    argon2_time_cost: int
    argon2_parallelism: int
    argon2_hash_length: int
    argon2_salt_length: int
    argon2_max_concurrency: int
    argon2_queue_size: int
    argon2_queue_timeout: float
    password_min_length: int
    password_max_length: int
    password_blocklist_file: Path | None
    lockout_threshold: int
    lockout_duration: float
    # Rate limits
    rate_limit_enabled: bool
    rate_limit_requests_per_window: int
    rate_limit_window_duration: float
    rate_limit_enable_per_user: bool
    rate_limit_user_requests_per_window: int
    rate_limit_login_requests: int
    rate_limit_login_window: float
    rate_limit_register_requests: int
    rate_limit_register_window: float
    rate_limit_password_reset_requests: int
    rate_limit_password_reset_window: float
    rate_limit_verification_requests: int
    rate_limit_verification_window: float
    # Links, verification, data protection, consistency
    email_verification_token_ttl: float
    password_reset_token_ttl: float
    email_verification_url: str
    password_reset_url: str
    email_verification_required: bool
    data_encryption_key: Secret[bytes] | None  # None only in dev/test before ensure_dev_secrets
    email_index_key: Secret[str] | None
    consistency_wait_timeout: float
    idempotency_ttl: float
    # gRPC, HTTP edge
    service_tokens: tuple[ServiceToken, ...]
    grpc_tls_cert_file: Path | None
    grpc_tls_key_file: Path | None
    grpc_tls_client_ca_file: Path | None
    grpc_reflection: bool
    trusted_proxies: tuple[IPNetwork, ...]
    cors_allowed_origins: tuple[str, ...]
    admin_cors_allowed_origins: tuple[str, ...]
    # Events, projections, audit, telemetry
    events_stream: str
    events_stream_maxlen: int
    projection_batch_size: int
    ready_max_projection_lag: float
    audit_logs_keep_for_days: int
    audit_cleanup_interval: float
    audit_cleanup_batch_size: int
    otel_enabled: bool
    otel_exporter_otlp_endpoint: str
    otel_service_name: str
    otel_sample_rate: float
    # Vault
    vault_enabled: bool
    vault_addr: str
    vault_token: Secret[str] | None
    vault_token_file: Path | None
    vault_secret_path: str
    vault_refresh_interval: float
    vault_signing_keys: dict[str, Secret[str]] | None
    vault_active_kid: str | None
    # Derived
    resolved_database_url: Secret[str] | None
    resolved_redis_url: Secret[str] | None
    embedded_postgres: bool
    embedded_redis: bool
    # Warnings found while loading, as (VARIABLE, message), for the composition root to log.
    warnings: tuple[tuple[str, str], ...] = ()


def load_settings(environ: Mapping[str, str], *, vault: VaultOverlay | None = None) -> Settings:
    """Build and validate `Settings` from `environ`, overlaid by Vault when `VAULT_ENABLED=true`.

    `vault` replaces the overlay otherwise built from the VAULT_* variables (it is not used while Vault is
    disabled). Raises `ConfigError` listing every problem (exit code 3), or the Vault failure (exit code 4).
    """
    secrets, vault_blocked = _vault_secrets(environ, vault)
    overrides = secrets.env_overrides() if secrets is not None else {}
    r = EnvReader({**environ, **overrides}, from_vault=frozenset(overrides))
    app_env = r.choice("APP_ENV", "dev", APP_ENVS, fold_case=True)
    fields: dict[str, Any] = {"app_env": app_env}
    fields.update(env_general.general(r, app_env))
    fields.update(env_general.postgres(r, app_env))
    fields.update(env_general.redis(r, app_env))
    fields.update(env_security.tokens(r, app_env))
    fields.update(env_security.passwords(r))
    fields.update(env_security.rate_limits(r, app_env))
    fields.update(env_security.links_and_data(r, app_env))
    fields.update(env_edge.edge(r, app_env))
    fields.update(env_general.events_and_telemetry(r, app_env))
    fields.update(env_vault.vault(r, app_env))
    fields.update(_vault_signing_keys(r, secrets))
    if not vault_blocked:
        _check_required(r, fields)
    if r.problems:
        raise ConfigError(r.problems)
    return Settings(**fields, warnings=tuple(r.warnings))


def settings_from_env() -> Settings:
    """`load_settings(os.environ)`, with the Vault overlay when it is enabled."""
    return load_settings(os.environ)


def _vault_secrets(environ: Mapping[str, str], overlay: VaultOverlay | None) -> tuple[VaultSecrets | None, bool]:
    """The Vault values when enabled, and whether Vault was enabled but could not be consulted."""
    pre = EnvReader(environ)
    fields = env_vault.vault(pre, pre.choice("APP_ENV", "dev", APP_ENVS, fold_case=True))
    if not fields["vault_enabled"]:
        return None, False
    if pre.problems:  # reported by the main pass; never send a token to a misconfigured address
        return None, True
    own = overlay is None
    overlay = overlay or VaultOverlay.from_env(environ)
    try:
        return overlay.load(), False
    finally:
        if own:
            overlay.close()


def _vault_signing_keys(r: EnvReader, secrets: VaultSecrets | None) -> dict[str, Any]:
    if secrets is None:
        return {"vault_signing_keys": None, "vault_active_kid": None}
    for name, problem in secrets.problems:
        r.problem(name, f"{problem} (Vault)")
    keys, active = secrets.signing_keys, secrets.active_kid
    if keys is not None:
        plain = {kid: pem.get() for kid, pem in keys.items()}
        for problem in key_set_problems(plain, active):
            r.problem("VAULT_SECRET_PATH", f"jwt: {problem}")
    elif active is not None:
        r.problem("VAULT_SECRET_PATH", "jwt: active_kid is set but signing_keys is missing")
    return {"vault_signing_keys": keys, "vault_active_kid": active}


def _check_required(r: EnvReader, fields: dict[str, Any]) -> None:
    """Outside dev/test: a database, a signing key, the data-protection keys, service tokens (SPEC §10.4)."""
    app_env = fields["app_env"]
    if is_dev_like(app_env):
        return
    where = f"in {app_env}"
    if fields["resolved_database_url"] is None:
        r.problem("DB_HOST", f"a database is required {where}: set DATABASE_URL or DB_HOST")
    if fields["jwt_algorithm"] == "EdDSA" and not any(
        fields[k] is not None for k in ("vault_signing_keys", "jwt_keys_dir", "jwt_private_key")
    ):
        r.problem("JWT_KEYS_DIR", f"a signing key is required {where}: set JWT_KEYS_DIR or JWT_PRIVATE_KEY")
    for name in ("DATA_ENCRYPTION_KEY", "EMAIL_INDEX_KEY"):
        if fields[name.lower()] is None and r.ok(name):
            r.problem(name, f"is required {where}")
    if not fields["service_tokens"] and r.ok("SERVICE_TOKENS"):
        r.problem("SERVICE_TOKENS", f"is required {where}")
