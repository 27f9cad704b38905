"""SPEC §10.1 sections: general and listeners, PostgreSQL, Redis, events/projections/audit, telemetry.

Each function reads its variables through an `EnvReader` and returns the matching `Settings` fields.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pandora_users.config.profiles import PROFILES, is_dev_like
from pandora_users.config.reader import EnvReader
from pandora_users.config.secret import Secret
from pandora_users.config.urls import (
    STRONG_SSLMODES,
    build_postgres_url,
    build_redis_url,
    is_local_host,
    postgres_url_hosts_and_sslmode,
    postgres_url_problem,
    redis_url_problem,
)

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_PORT = (1, 65535)


def general(r: EnvReader, app_env: str) -> dict[str, Any]:
    """General settings and listeners."""
    profile = PROFILES[app_env]
    server_host = r.text("SERVER_HOST", "0.0.0.0")  # noqa: S104 - binding all interfaces is the documented default
    fields: dict[str, Any] = {
        "log_level": r.choice("LOG_LEVEL", profile.log_level, ("debug", "info", "warning", "error"), fold_case=True),
        "log_format": r.choice("LOG_FORMAT", profile.log_format, ("json", "console"), fold_case=True),
        "data_dir": Path(r.text("DATA_DIR", ".pandora-users")),
        "auto_migrate": r.boolean("AUTO_MIGRATE", profile.auto_migrate),
        "server_host": server_host,
        "server_port": r.integer("SERVER_PORT", 8080, *_PORT),
        "admin_host": r.text("ADMIN_HOST", server_host),
        "admin_port": r.integer("ADMIN_PORT", 8081, *_PORT),
        "grpc_port": r.integer("GRPC_PORT", 9090, *_PORT),
        "max_request_body_bytes": r.integer("MAX_REQUEST_BODY_BYTES", 65536, 1024, 1048576),
        "shutdown_timeout": r.duration("SHUTDOWN_TIMEOUT", "10s", positive=True),
        # Processes serving the public listener (one shared socket): one in dev/test, the usable cores elsewhere.
        "http_workers": r.integer("HTTP_WORKERS", 1 if is_dev_like(app_env) else min(usable_cpus(), 16), 1, 64),
        # /metrics of a process without the admin listener (`api`, `rpc`, `project`); off when unset.
        "metrics_port": _metrics_port(r),
    }
    _check_ports(r, fields)
    if is_dev_like(app_env):
        _check_data_dir(r, fields["data_dir"])
    return fields


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    return max(1, len(os.sched_getaffinity(0)))


def _metrics_port(r: EnvReader) -> int | None:
    if r.optional("METRICS_PORT") is None:
        return None
    return r.integer("METRICS_PORT", 9100, *_PORT)


def _check_ports(r: EnvReader, fields: dict[str, Any]) -> None:
    names = ("SERVER_PORT", "ADMIN_PORT", "GRPC_PORT", "METRICS_PORT")
    seen: dict[int, str] = {}
    for name in names:
        port = fields[name.lower()]
        if port is None:
            continue
        if port in seen and r.ok(name, seen[port]):
            r.problem(name, f"must differ from {seen[port]} (both are {port})")
        seen.setdefault(port, name)


def _check_data_dir(r: EnvReader, data_dir: Path) -> None:
    if data_dir.exists():
        if not data_dir.is_dir():
            r.problem("DATA_DIR", f"{data_dir} is not a directory")
        elif not os.access(data_dir, os.W_OK | os.X_OK):
            r.problem("DATA_DIR", f"{data_dir} is not writable")
        return
    parent = data_dir.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        r.problem("DATA_DIR", f"{data_dir} does not exist and cannot be created under {parent}")


def postgres(r: EnvReader, app_env: str) -> dict[str, Any]:
    """PostgreSQL settings and the resolved URL (DATABASE_URL, else built from DB_*)."""
    url = r.secret("DATABASE_URL")
    if url is not None and (problem := postgres_url_problem(url.get())):
        r.problem("DATABASE_URL", problem)
    fields: dict[str, Any] = {
        "database_url": url,
        "db_host": r.optional("DB_HOST"),
        "db_port": r.integer("DB_PORT", 5432, *_PORT),
        "db_user": r.optional("DB_USER"),
        "db_password": r.secret("DB_PASSWORD"),
        "db_name": r.optional("DB_NAME"),
        "db_sslmode": r.choice("DB_SSLMODE", "disable", SSLMODES),
        "db_pool_min": r.integer("DB_POOL_MIN", 5, 1, 200),
        "db_pool_max": r.integer("DB_POOL_MAX", 25, 1, 200),
        "db_statement_timeout": r.duration("DB_STATEMENT_TIMEOUT", "5s", positive=True),
        "db_lock_timeout": r.duration("DB_LOCK_TIMEOUT", "5s", positive=True),
    }
    if r.ok("DB_POOL_MIN", "DB_POOL_MAX") and fields["db_pool_min"] > fields["db_pool_max"]:
        r.problem("DB_POOL_MIN", f"must not exceed DB_POOL_MAX ({fields['db_pool_min']} > {fields['db_pool_max']})")
    fields["resolved_database_url"] = _database_url(r, fields)
    fields["embedded_postgres"] = is_dev_like(app_env) and url is None and fields["db_host"] is None
    if app_env == "prod":
        _check_prod_sslmode(r, fields)
    return fields


def _database_url(r: EnvReader, fields: dict[str, Any]) -> Secret[str] | None:
    url: Secret[str] | None = fields["database_url"]
    host: str | None = fields["db_host"]
    if url is not None or host is None:
        return url
    for name in ("DB_USER", "DB_NAME"):
        if fields[name.lower()] is None:
            r.problem(name, "is required with DB_HOST")
    password: Secret[str] | None = fields["db_password"]
    return Secret(
        build_postgres_url(
            host=host,
            port=fields["db_port"],
            user=fields["db_user"] or "",
            password=None if password is None else password.get(),
            name=fields["db_name"] or "",
            sslmode=fields["db_sslmode"],
        )
    )


def _check_prod_sslmode(r: EnvReader, fields: dict[str, Any]) -> None:
    url: Secret[str] | None = fields["database_url"]
    if url is not None:
        if not r.ok("DATABASE_URL"):
            return
        name, (hosts, sslmode) = "DATABASE_URL", postgres_url_hosts_and_sslmode(url.get())
    elif fields["db_host"] is not None:
        name, hosts, sslmode = "DB_SSLMODE", [fields["db_host"]], fields["db_sslmode"]
    else:
        return
    remote = [h for h in hosts if not is_local_host(h)]
    if remote and sslmode not in STRONG_SSLMODES:
        r.problem(
            name,
            f"sslmode must be require, verify-ca or verify-full in prod for the remote host "
            f"{remote[0]} (got {sslmode})",
        )


def redis(r: EnvReader, app_env: str) -> dict[str, Any]:
    """Redis settings and the resolved URL (REDIS_URL, else built from REDIS_* when configured)."""
    url = r.secret("REDIS_URL")
    if url is not None and (problem := redis_url_problem(url.get())):
        r.problem("REDIS_URL", problem)
    password = r.secret("REDIS_PASSWORD")
    fields: dict[str, Any] = {
        "redis_url": url,
        "redis_host": r.text("REDIS_HOST", "localhost"),
        "redis_port": r.integer("REDIS_PORT", 6379, *_PORT),
        "redis_password": password,
        "redis_db": r.integer("REDIS_DB", 0, 0, 15),
        "redis_key_prefix": r.text("REDIS_KEY_PREFIX", "pandora-users:"),
    }
    configured = url is not None or r.is_set("REDIS_HOST")
    resolved = url
    # Outside dev/test there is no embedded server, so the documented defaults (localhost:6379) apply.
    if url is None and (configured or not is_dev_like(app_env)):
        resolved = Secret(
            build_redis_url(
                host=fields["redis_host"],
                port=fields["redis_port"],
                password=None if password is None else password.get(),
                db=fields["redis_db"],
            )
        )
    fields["resolved_redis_url"] = resolved
    fields["embedded_redis"] = is_dev_like(app_env) and not configured
    return fields


def events_and_telemetry(r: EnvReader, app_env: str) -> dict[str, Any]:
    """Events stream, projections, audit retention and OpenTelemetry."""
    return {
        "events_stream": r.text("EVENTS_STREAM", "user-service:events"),
        "events_stream_maxlen": r.integer("EVENTS_STREAM_MAXLEN", 10000, 100),
        "projection_batch_size": r.integer("PROJECTION_BATCH_SIZE", 100, 1, 1000),
        "ready_max_projection_lag": r.duration("READY_MAX_PROJECTION_LAG", "30s", positive=True),
        "audit_logs_keep_for_days": r.integer(
            "AUDIT_LOGS_KEEP_FOR_DAYS", PROFILES[app_env].audit_logs_keep_for_days, 1, 3650
        ),
        "audit_cleanup_interval": r.duration("AUDIT_CLEANUP_INTERVAL", "24h", low=60),
        "audit_cleanup_batch_size": r.integer("AUDIT_CLEANUP_BATCH_SIZE", 10000, 100, 100000),
        "otel_enabled": r.boolean("OTEL_ENABLED", False),
        "otel_exporter_otlp_endpoint": r.text("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317"),
        "otel_service_name": r.text("OTEL_SERVICE_NAME", "pandora-users"),
        "otel_sample_rate": r.number("OTEL_SAMPLE_RATE", 1.0, 0.0, 1.0),
    }
