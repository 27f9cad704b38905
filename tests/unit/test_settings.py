"""Settings: APP_ENV profiles, validation rules (SPEC §10.1, §10.2, §10.4), secrets, dev keys, durations."""

from __future__ import annotations

import base64
import datetime as dt
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given
from hypothesis import strategies as st

from pandora_users.config.dev_secrets import ensure_dev_secrets
from pandora_users.config.durations import format_duration, parse_duration
from pandora_users.config.env_vault import split_secret_path
from pandora_users.config.errors import ConfigError
from pandora_users.config.settings import Secret, ServiceToken, Settings, load_settings
from pandora_users.config.vault import VaultSecrets

TOKEN_A = "A" * 20 + "tokenA.~+/=-_" + "1" * 10
TOKEN_B = "b" * 40
DEK = bytes(range(32))
EIK = "email-index-key-" + "x" * 32


def ed25519_pem() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def ec_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir()
    (directory / "2026-01-01.pem").write_text(ed25519_pem())
    (directory / "2026-03-01.pem").write_text(ed25519_pem())
    return directory


@pytest.fixture
def prod_env(tmp_path: Path, keys_dir: Path) -> dict[str, str]:
    """A complete, valid prod configuration."""
    return {
        "APP_ENV": "prod",
        "DATA_DIR": str(tmp_path / "data"),
        "DB_HOST": "db.internal",
        "DB_USER": "pandora",
        "DB_PASSWORD": "db-pass/word@1",
        "DB_NAME": "users",
        "DB_SSLMODE": "verify-full",
        "REDIS_HOST": "redis.internal",
        "REDIS_PASSWORD": "redis-password",
        "JWT_KEYS_DIR": str(keys_dir),
        "DATA_ENCRYPTION_KEY": base64.b64encode(DEK).decode(),
        "EMAIL_INDEX_KEY": EIK,
        "SERVICE_TOKENS": f"billing:{TOKEN_A},kyc:{TOKEN_B}:GetUser|UpdateKYCStatus",
        "EMAIL_VERIFICATION_URL": "https://app.example.com/verify?token={token}",
        "PASSWORD_RESET_URL": "https://app.example.com/reset?token={token}",
    }


def load(env: Mapping[str, str]) -> Settings:
    return load_settings(env)


def problems(env: Mapping[str, str]) -> dict[str, list[str]]:
    """The problems `load_settings` reports, by variable (fails the test if it accepts `env`)."""
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert caught.value.exit_code == 3
    found: dict[str, list[str]] = {}
    for name, problem in caught.value.problems:
        found.setdefault(name, []).append(problem)
    return found


def dev(tmp_path: Path, **env: str) -> dict[str, str]:
    return {"APP_ENV": "dev", "DATA_DIR": str(tmp_path / "data"), **env}


# --- Profiles and defaults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app_env", "level", "fmt", "migrate", "reflection", "days"),
    [
        ("dev", "debug", "console", True, True, 30),
        ("test", "warning", "json", True, False, 30),
        ("sandbox", "info", "json", False, True, 90),
        ("audit", "info", "json", False, False, 2555),
        ("prod", "info", "json", False, False, 2555),
    ],
)
def test_profile_defaults(
    prod_env: dict[str, str], app_env: str, level: str, fmt: str, migrate: bool, reflection: bool, days: int
) -> None:
    settings = load({**prod_env, "APP_ENV": app_env})
    assert settings.app_env == app_env
    assert (settings.log_level, settings.log_format) == (level, fmt)
    assert settings.auto_migrate is migrate
    assert settings.grpc_reflection is reflection
    assert settings.audit_logs_keep_for_days == days


def test_dev_defaults_with_nothing_configured(tmp_path: Path) -> None:
    settings = load(dev(tmp_path))
    assert (settings.server_host, settings.server_port, settings.admin_port, settings.grpc_port) == (
        "0.0.0.0",
        8080,
        8081,
        9090,
    )
    assert settings.admin_host == "0.0.0.0"
    assert settings.shutdown_timeout == 10.0
    assert settings.jwt_access_token_expiry == 900.0
    assert settings.jwt_refresh_token_expiry == 168 * 3600.0
    assert settings.session_idle_timeout == 0.0
    assert settings.session_record_retention == 720 * 3600.0
    assert settings.argon2_queue_size == 2 * settings.argon2_max_concurrency
    assert settings.jwt_kid is None and settings.jwt_algorithm == "EdDSA"
    assert settings.embedded_postgres and settings.embedded_redis
    assert settings.resolved_database_url is None and settings.resolved_redis_url is None
    assert settings.data_encryption_key is None and settings.email_index_key is None
    assert settings.service_tokens == ()
    assert (
        "SERVICE_TOKENS",
        "is empty: every gRPC call is accepted without a service token",
    ) in settings.warnings


def test_admin_host_follows_server_host(tmp_path: Path) -> None:
    assert load(dev(tmp_path, SERVER_HOST="127.0.0.1")).admin_host == "127.0.0.1"
    assert load(dev(tmp_path, SERVER_HOST="127.0.0.1", ADMIN_HOST="10.0.0.1")).admin_host == "10.0.0.1"


def test_empty_values_count_as_unset(tmp_path: Path) -> None:
    settings = load(dev(tmp_path, DB_HOST="", SERVER_PORT="", LOG_LEVEL=" "))
    assert settings.embedded_postgres and settings.server_port == 8080 and settings.log_level == "debug"


def test_app_env_must_be_known(tmp_path: Path) -> None:
    assert "APP_ENV" in problems(dev(tmp_path, APP_ENV="staging"))
    assert load(dev(tmp_path, APP_ENV="TEST")).app_env == "test"


def test_test_profile_has_no_service_token_warning(tmp_path: Path) -> None:
    assert load(dev(tmp_path, APP_ENV="test")).warnings == ()


# --- General and listeners ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("true", True), ("1", True), ("YES", True), ("no", False), ("0", False)])
def test_booleans(tmp_path: Path, text: str, value: bool) -> None:
    assert load(dev(tmp_path, AUTO_MIGRATE=text)).auto_migrate is value


def test_boolean_rejects_other_words(tmp_path: Path) -> None:
    assert "must be a boolean" in problems(dev(tmp_path, OTEL_ENABLED="maybe"))["OTEL_ENABLED"][0]


@pytest.mark.parametrize("port", ["0", "65536", "http", "80.5"])
def test_ports_must_be_in_range(tmp_path: Path, port: str) -> None:
    assert "SERVER_PORT" in problems(dev(tmp_path, SERVER_PORT=port))


def test_ports_must_differ(tmp_path: Path) -> None:
    found = problems(dev(tmp_path, ADMIN_PORT="9090"))
    assert found["GRPC_PORT"] == ["must differ from ADMIN_PORT (both are 9090)"]
    assert load(dev(tmp_path, SERVER_PORT="1", ADMIN_PORT="2", GRPC_PORT="3")).grpc_port == 3


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    assert load(dev(tmp_path, LOG_LEVEL="WARNING")).log_level == "warning"
    assert "LOG_LEVEL" in problems(dev(tmp_path, LOG_LEVEL="verbose"))
    assert "LOG_FORMAT" in problems(dev(tmp_path, LOG_FORMAT="xml"))


def test_body_limit_range(tmp_path: Path) -> None:
    assert "MAX_REQUEST_BODY_BYTES" in problems(dev(tmp_path, MAX_REQUEST_BODY_BYTES="1023"))
    assert load(dev(tmp_path, MAX_REQUEST_BODY_BYTES="1048576")).max_request_body_bytes == 1048576


def test_shutdown_timeout_is_a_positive_duration(tmp_path: Path) -> None:
    assert "SHUTDOWN_TIMEOUT" in problems(dev(tmp_path, SHUTDOWN_TIMEOUT="0"))
    assert "invalid duration" in problems(dev(tmp_path, SHUTDOWN_TIMEOUT="10"))["SHUTDOWN_TIMEOUT"][0]
    assert load(dev(tmp_path, SHUTDOWN_TIMEOUT="1m30s")).shutdown_timeout == 90.0


def test_data_dir_must_be_a_writable_directory(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert "is not a directory" in problems(dev(tmp_path, DATA_DIR=str(a_file)))["DATA_DIR"][0]
    assert load(dev(tmp_path, DATA_DIR=str(tmp_path / "new" / "dir"))).data_dir == tmp_path / "new" / "dir"


# --- PostgreSQL and Redis ------------------------------------------------------------------------


def test_database_url_must_be_postgres(tmp_path: Path) -> None:
    found = problems(dev(tmp_path, DATABASE_URL="mysql://u:hunter2@h/db"))
    assert found["DATABASE_URL"] == ["must be a postgres:// or postgresql:// URL"]
    settings = load(dev(tmp_path, DATABASE_URL="postgres://u:p@h/db", DB_HOST="ignored"))
    assert settings.resolved_database_url == Secret("postgres://u:p@h/db")
    assert not settings.embedded_postgres


def test_db_host_needs_user_and_name(tmp_path: Path) -> None:
    found = problems(dev(tmp_path, DB_HOST="db"))
    assert found["DB_USER"] == ["is required with DB_HOST"] and found["DB_NAME"] == ["is required with DB_HOST"]


def test_database_url_built_from_parts(tmp_path: Path) -> None:
    env = dev(tmp_path, DB_HOST="db", DB_PORT="6543", DB_USER="app", DB_PASSWORD="p@ss:w/rd", DB_NAME="users")
    url = load({**env, "DB_SSLMODE": "require"}).resolved_database_url
    assert url is not None
    assert url.get() == "postgresql://app:p%40ss%3Aw%2Frd@db:6543/users?sslmode=require"
    socket = load({**env, "DB_HOST": "/run/postgresql"}).resolved_database_url
    assert socket is not None and "host=/run/postgresql" in socket.get()


def test_db_pool_bounds(tmp_path: Path) -> None:
    assert "DB_POOL_MIN" in problems(dev(tmp_path, DB_POOL_MIN="30", DB_POOL_MAX="20"))
    assert "DB_POOL_MAX" in problems(dev(tmp_path, DB_POOL_MAX="201"))
    assert "DB_SSLMODE" in problems(dev(tmp_path, DB_SSLMODE="on"))
    settings = load(dev(tmp_path, DB_POOL_MIN="20", DB_POOL_MAX="20"))
    assert (settings.db_pool_min, settings.db_pool_max) == (20, 20)


@pytest.mark.parametrize(("host", "sslmode", "ok"), [
    ("db.internal", "disable", False),
    ("db.internal", "prefer", False),
    ("db.internal", "require", True),
    ("10.1.2.3", "verify-ca", True),
    ("localhost", "disable", True),
    ("127.0.0.1", "disable", True),
    ("::1", "disable", True),
    ("/var/run/postgresql", "disable", True),
])  # fmt: skip
def test_prod_sslmode(prod_env: dict[str, str], host: str, sslmode: str, ok: bool) -> None:
    env = {**prod_env, "DB_HOST": host, "DB_SSLMODE": sslmode}
    if ok:
        assert load(env).db_sslmode == sslmode
    else:
        assert "in prod for the remote host" in problems(env)["DB_SSLMODE"][0]
    assert load({**env, "APP_ENV": "audit"}).db_sslmode == sslmode  # only prod refuses weak modes


def test_prod_sslmode_in_database_url(prod_env: dict[str, str]) -> None:
    assert "DATABASE_URL" in problems({**prod_env, "DATABASE_URL": "postgresql://u:p@db.internal/users"})
    assert load({**prod_env, "DATABASE_URL": "postgresql://u:p@db.internal/users?sslmode=require"})
    assert load({**prod_env, "DATABASE_URL": "postgresql://u@/users?host=/run/postgresql"})


def test_redis_resolution(tmp_path: Path) -> None:
    assert "REDIS_URL" in problems(dev(tmp_path, REDIS_URL="http://redis"))
    assert "REDIS_DB" in problems(dev(tmp_path, REDIS_DB="16"))
    built = load(dev(tmp_path, REDIS_HOST="cache", REDIS_PASSWORD="s3:cret", REDIS_DB="2"))
    assert built.resolved_redis_url == Secret("redis://:s3%3Acret@cache:6379/2")
    assert not built.embedded_redis
    given_url = load(dev(tmp_path, REDIS_URL="rediss://cache:6380/1", REDIS_HOST="ignored"))
    assert given_url.resolved_redis_url == Secret("rediss://cache:6380/1")
    assert load(dev(tmp_path, REDIS_PORT="6380")).resolved_redis_url is None  # embedded: no REDIS_HOST


def test_outside_dev_redis_defaults_apply(prod_env: dict[str, str]) -> None:
    env = {k: v for k, v in prod_env.items() if not k.startswith("REDIS_")}
    settings = load(env)
    assert settings.resolved_redis_url == Secret("redis://localhost:6379/0")
    assert not settings.embedded_redis and not settings.embedded_postgres


# --- Tokens and sessions -------------------------------------------------------------------------


def test_hs256_needs_a_long_secret(tmp_path: Path) -> None:
    assert problems(dev(tmp_path, JWT_ALGORITHM="HS256"))["JWT_SECRET"] == ["is required when JWT_ALGORITHM=HS256"]
    short = problems(dev(tmp_path, JWT_ALGORITHM="HS256", JWT_SECRET="s" * 31))
    assert short["JWT_SECRET"] == ["must be at least 32 characters long with HS256"]
    settings = load(dev(tmp_path, JWT_ALGORITHM="HS256", JWT_SECRET="s" * 32))
    assert settings.jwt_kid == "static-v1" and settings.jwt_secret == Secret("s" * 32)
    assert "JWT_ALGORITHM" in problems(dev(tmp_path, JWT_ALGORITHM="RS256"))


def test_hs256_outside_dev_warns(prod_env: dict[str, str]) -> None:
    env = {**prod_env, "JWT_ALGORITHM": "HS256", "JWT_SECRET": "s" * 40}
    del env["JWT_KEYS_DIR"]
    assert any(name == "JWT_ALGORITHM" for name, _ in load(env).warnings)


def test_jwt_kid_syntax(tmp_path: Path) -> None:
    assert "JWT_KID" in problems(dev(tmp_path, JWT_KID="bad kid"))
    assert load(dev(tmp_path, JWT_KID="2026-03-01.v2_a")).jwt_kid == "2026-03-01.v2_a"


def test_private_key_must_be_ed25519_pkcs8(tmp_path: Path) -> None:
    assert "JWT_PRIVATE_KEY" in problems(dev(tmp_path, JWT_PRIVATE_KEY="not a key"))
    assert "not an Ed25519" in problems(dev(tmp_path, JWT_PRIVATE_KEY=ec_pem()))["JWT_PRIVATE_KEY"][0]
    pem = ed25519_pem()
    assert load(dev(tmp_path, JWT_PRIVATE_KEY=pem)).jwt_private_key == Secret(pem)
    one_line = pem.replace("\n", "\\n")
    assert load(dev(tmp_path, JWT_PRIVATE_KEY=one_line)).jwt_private_key == Secret(pem)


def test_private_key_and_keys_dir_not_together(tmp_path: Path, keys_dir: Path) -> None:
    found = problems(dev(tmp_path, JWT_PRIVATE_KEY=ed25519_pem(), JWT_KEYS_DIR=str(keys_dir)))
    assert found["JWT_PRIVATE_KEY"] == ["must not be set together with JWT_KEYS_DIR"]


def test_keys_dir_rules(tmp_path: Path, keys_dir: Path) -> None:
    assert load(dev(tmp_path, JWT_KEYS_DIR=str(keys_dir))).jwt_keys_dir == keys_dir
    (keys_dir / "active_kid").write_text("2026-01-01\n")
    assert load(dev(tmp_path, JWT_KEYS_DIR=str(keys_dir))).jwt_keys_dir == keys_dir
    (keys_dir / "active_kid").write_text("2027-01-01")
    assert "active_kid names '2027-01-01'" in problems(dev(tmp_path, JWT_KEYS_DIR=str(keys_dir)))["JWT_KEYS_DIR"][0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no <kid>.pem key" in problems(dev(tmp_path, JWT_KEYS_DIR=str(empty)))["JWT_KEYS_DIR"][0]
    assert "cannot read" in problems(dev(tmp_path, JWT_KEYS_DIR=str(tmp_path / "nope")))["JWT_KEYS_DIR"][0]


def test_keys_dir_rejects_bad_files(tmp_path: Path, keys_dir: Path) -> None:
    (keys_dir / "bad kid.pem").write_text(ed25519_pem())
    (keys_dir / "garbage.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    found = problems(dev(tmp_path, JWT_KEYS_DIR=str(keys_dir)))["JWT_KEYS_DIR"]
    assert len(found) == 2
    assert any("'bad kid'" in p for p in found) and any(p.startswith("garbage.pem") for p in found)


def test_token_lifetimes(tmp_path: Path) -> None:
    found = problems(dev(tmp_path, JWT_ACCESS_TOKEN_EXPIRY="2h", JWT_REFRESH_TOKEN_EXPIRY="2h"))
    assert found["JWT_ACCESS_TOKEN_EXPIRY"] == ["must be shorter than JWT_REFRESH_TOKEN_EXPIRY (2h ≥ 2h)"]
    assert "JWT_ACCESS_TOKEN_EXPIRY" in problems(dev(tmp_path, JWT_ACCESS_TOKEN_EXPIRY="500ms"))
    assert "JWT_REFRESH_TOKEN_EXPIRY" in problems(dev(tmp_path, JWT_REFRESH_TOKEN_EXPIRY="2161h"))
    found = problems(dev(tmp_path, SESSION_RECORD_RETENTION="100h"))
    assert found["SESSION_RECORD_RETENTION"] == ["must be at least JWT_REFRESH_TOKEN_EXPIRY (100h < 168h)"]
    settings = load(dev(tmp_path, JWT_ACCESS_TOKEN_EXPIRY="1s", JWT_REFRESH_TOKEN_EXPIRY="2160h",
                        SESSION_RECORD_RETENTION="2160h"))  # fmt: skip
    assert (settings.jwt_access_token_expiry, settings.session_record_retention) == (1.0, 2160 * 3600.0)


def test_session_limits(tmp_path: Path) -> None:
    assert (
        "must be 0 or at least 1s" in problems(dev(tmp_path, SESSION_IDLE_TIMEOUT="500ms"))["SESSION_IDLE_TIMEOUT"][0]
    )
    assert load(dev(tmp_path, SESSION_IDLE_TIMEOUT="30m")).session_idle_timeout == 1800.0
    assert "SESSION_MAX_PER_USER" in problems(dev(tmp_path, SESSION_MAX_PER_USER="1001"))


# --- Passwords, hashing, lockout, rate limits ----------------------------------------------------


@pytest.mark.parametrize(("name", "bad", "good"), [
    ("ARGON2_MEMORY_KIB", "8191", "8192"),
    ("ARGON2_TIME_COST", "11", "10"),
    ("ARGON2_PARALLELISM", "0", "16"),
    ("ARGON2_HASH_LENGTH", "65", "64"),
    ("ARGON2_SALT_LENGTH", "15", "16"),
    ("ARGON2_MAX_CONCURRENCY", "65", "64"),
    ("ARGON2_QUEUE_SIZE", "10001", "0"),
    ("PASSWORD_MIN_LENGTH", "7", "64"),
    ("LOCKOUT_THRESHOLD", "2", "100"),
    ("SESSION_MAX_PER_USER", "0", "1000"),
    ("EVENTS_STREAM_MAXLEN", "99", "100"),
    ("PROJECTION_BATCH_SIZE", "1001", "1000"),
    ("AUDIT_LOGS_KEEP_FOR_DAYS", "3651", "3650"),
    ("AUDIT_CLEANUP_BATCH_SIZE", "99", "100000"),
    ("RATE_LIMIT_LOGIN_REQUESTS", "0", "1"),
    ("OTEL_SAMPLE_RATE", "1.5", "0.25"),
])  # fmt: skip
def test_numeric_ranges(tmp_path: Path, name: str, bad: str, good: str) -> None:
    assert name in problems(dev(tmp_path, **{name: bad}))
    assert str(getattr(load(dev(tmp_path, **{name: good})), name.lower())) == good


@pytest.mark.parametrize(("name", "bad", "good", "seconds"), [
    ("ARGON2_QUEUE_TIMEOUT", "0", "250ms", 0.25),
    ("LOCKOUT_DURATION", "24h1ms", "24h", 86400.0),
    ("RATE_LIMIT_WINDOW_DURATION", "999ms", "1s", 1.0),
    ("RATE_LIMIT_REGISTER_WINDOW", "0", "2h", 7200.0),
    ("EMAIL_VERIFICATION_TOKEN_TTL", "169h", "168h", 604800.0),
    ("PASSWORD_RESET_TOKEN_TTL", "25h", "1s", 1.0),
    ("CONSISTENCY_WAIT_TIMEOUT", "31s", "0", 0.0),
    ("IDEMPOTENCY_TTL", "73h", "72h", 259200.0),
    ("READY_MAX_PROJECTION_LAG", "0", "5s", 5.0),
    ("AUDIT_CLEANUP_INTERVAL", "59s", "1m", 60.0),
    ("DB_STATEMENT_TIMEOUT", "0", "1500ms", 1.5),
    ("VAULT_REFRESH_INTERVAL", "1x", "30s", 30.0),
])  # fmt: skip
def test_duration_ranges(tmp_path: Path, name: str, bad: str, good: str, seconds: float) -> None:
    assert name in problems(dev(tmp_path, **{name: bad}))
    assert getattr(load(dev(tmp_path, **{name: good})), name.lower()) == seconds


def test_password_max_length_follows_min(tmp_path: Path) -> None:
    found = problems(dev(tmp_path, PASSWORD_MIN_LENGTH="20", PASSWORD_MAX_LENGTH="19"))
    assert found["PASSWORD_MAX_LENGTH"] == ["must be between 20 and 256 (got 19)"]
    assert "PASSWORD_MAX_LENGTH" in problems(dev(tmp_path, PASSWORD_MAX_LENGTH="257"))


def test_blocklist_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("password\nqwerty\n", encoding="utf-8")
    bad.write_bytes(b"\xff\xfe\x00")
    assert load(dev(tmp_path, PASSWORD_BLOCKLIST_FILE=str(good))).password_blocklist_file == good
    assert problems(dev(tmp_path, PASSWORD_BLOCKLIST_FILE=str(bad)))["PASSWORD_BLOCKLIST_FILE"] == [
        "is not valid UTF-8"
    ]
    assert (
        "cannot read"
        in problems(dev(tmp_path, PASSWORD_BLOCKLIST_FILE=str(tmp_path / "x")))["PASSWORD_BLOCKLIST_FILE"][0]
    )


def test_rate_limits_can_be_disabled_except_in_prod(prod_env: dict[str, str]) -> None:
    assert problems({**prod_env, "RATE_LIMIT_ENABLED": "false"})["RATE_LIMIT_ENABLED"] == ["must not be false in prod"]
    assert load({**prod_env, "APP_ENV": "audit", "RATE_LIMIT_ENABLED": "false"}).rate_limit_enabled is False


# --- Links and data protection -------------------------------------------------------------------


def test_link_urls(tmp_path: Path, prod_env: dict[str, str]) -> None:
    assert problems(dev(tmp_path, PASSWORD_RESET_URL="http://x/reset"))["PASSWORD_RESET_URL"] == [
        "must contain the placeholder {token}"
    ]
    assert (
        "absolute" in problems(dev(tmp_path, EMAIL_VERIFICATION_URL="/verify?t={token}"))["EMAIL_VERIFICATION_URL"][0]
    )
    http = {**prod_env, "EMAIL_VERIFICATION_URL": "http://app.example.com/v?token={token}"}
    assert problems(http)["EMAIL_VERIFICATION_URL"][0].startswith("must use https in prod")
    assert load({**http, "APP_ENV": "sandbox"}).email_verification_url == "http://app.example.com/v?token={token}"


def test_data_encryption_key(tmp_path: Path) -> None:
    assert "DATA_ENCRYPTION_KEY" in problems(dev(tmp_path, DATA_ENCRYPTION_KEY="not base64!"))
    short = base64.b64encode(bytes(16)).decode()
    assert problems(dev(tmp_path, DATA_ENCRYPTION_KEY=short))["DATA_ENCRYPTION_KEY"] == [
        "must decode to exactly 32 bytes (got 16)"
    ]
    key = load(dev(tmp_path, DATA_ENCRYPTION_KEY=base64.b64encode(DEK).decode())).data_encryption_key
    assert key is not None and key.get() == DEK
    urlsafe = base64.urlsafe_b64encode(b"\xfb" * 32).decode()
    key = load(dev(tmp_path, DATA_ENCRYPTION_KEY=urlsafe)).data_encryption_key
    assert key is not None and key.get() == b"\xfb" * 32


def test_email_index_key_length(tmp_path: Path) -> None:
    assert "EMAIL_INDEX_KEY" in problems(dev(tmp_path, EMAIL_INDEX_KEY="k" * 31))
    assert load(dev(tmp_path, EMAIL_INDEX_KEY="k" * 32)).email_index_key == Secret("k" * 32)


# --- gRPC and HTTP edge --------------------------------------------------------------------------


def test_service_tokens_parsed(tmp_path: Path) -> None:
    settings = load(dev(tmp_path, SERVICE_TOKENS=f" billing:{TOKEN_A} , kyc:{TOKEN_B}:GetUser|UpdateKYCStatus"))
    assert settings.service_tokens == (
        ServiceToken("billing", Secret(TOKEN_A), None),
        ServiceToken("kyc", Secret(TOKEN_B), frozenset({"GetUser", "UpdateKYCStatus"})),
    )
    assert settings.warnings == ()


@pytest.mark.parametrize(("value", "expected"), [
    (f"Billing:{TOKEN_A}", "entry 1: the name must match"),
    ("billing:short", "entry 1 (billing): the token must have at least 32 characters"),
    (f"billing:{TOKEN_A},billing:{TOKEN_B}", "the name 'billing' is used more than once"),
    (f"billing:{TOKEN_A},kyc:{TOKEN_A}", "'kyc' uses the same token as another entry"),
    (f"billing:{TOKEN_A}:GetUser|DropTables", "entry 1 (billing): unknown RPC 'DropTables'"),
    (f"billing:{TOKEN_A}:GetUser:extra", "entry 1 must be name:token or name:token:Rpc1|Rpc2"),
    (f"billing:{TOKEN_A},", "entry 2 must be name:token"),
])  # fmt: skip
def test_service_tokens_syntax(tmp_path: Path, value: str, expected: str) -> None:
    found = problems(dev(tmp_path, SERVICE_TOKENS=value))["SERVICE_TOKENS"]
    assert any(p.startswith(expected) for p in found), found
    assert not any(TOKEN_A in p or TOKEN_B in p for p in found)


def test_service_tokens_required_outside_dev(prod_env: dict[str, str]) -> None:
    env = {k: v for k, v in prod_env.items() if k != "SERVICE_TOKENS"}
    assert problems(env)["SERVICE_TOKENS"] == ["is required in prod"]


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "pandora")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_grpc_tls_files(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = load(
        dev(
            tmp_path,
            GRPC_TLS_CERT_FILE=str(cert),
            GRPC_TLS_KEY_FILE=str(key),
            GRPC_TLS_CLIENT_CA_FILE=str(cert),
        )
    )
    assert (settings.grpc_tls_cert_file, settings.grpc_tls_client_ca_file) == (cert, cert)
    assert problems(dev(tmp_path, GRPC_TLS_CERT_FILE=str(cert)))["GRPC_TLS_KEY_FILE"] == [
        "is required with GRPC_TLS_CERT_FILE"
    ]
    assert "GRPC_TLS_CLIENT_CA_FILE" in problems(dev(tmp_path, GRPC_TLS_CLIENT_CA_FILE=str(cert)))
    swapped = problems(dev(tmp_path, GRPC_TLS_CERT_FILE=str(key), GRPC_TLS_KEY_FILE=str(cert)))
    assert swapped["GRPC_TLS_CERT_FILE"] == ["is not a PEM certificate file"]
    assert swapped["GRPC_TLS_KEY_FILE"] == ["is not an unencrypted PEM private key"]
    missing = problems(dev(tmp_path, GRPC_TLS_CERT_FILE=str(tmp_path / "x"), GRPC_TLS_KEY_FILE=str(key)))
    assert "cannot read" in missing["GRPC_TLS_CERT_FILE"][0]


def test_trusted_proxies(tmp_path: Path) -> None:
    settings = load(dev(tmp_path, TRUSTED_PROXIES="10.0.0.0/8, 192.168.1.7 ,2001:db8::/32"))
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"]
    found = problems(dev(tmp_path, TRUSTED_PROXIES="10.0.0.0/33,proxy.local"))["TRUSTED_PROXIES"]
    assert found == [
        "'10.0.0.0/33' is not an IP address or CIDR range",
        "'proxy.local' is not an IP address or CIDR range",
    ]


def test_cors_origins(tmp_path: Path, prod_env: dict[str, str]) -> None:
    settings = load(
        dev(
            tmp_path,
            CORS_ALLOWED_ORIGINS="*",
            ADMIN_CORS_ALLOWED_ORIGINS="HTTPS://Admin.Example.com:443,http://localhost:3000",
        )
    )
    assert settings.cors_allowed_origins == ("*",)
    assert settings.admin_cors_allowed_origins == ("https://admin.example.com", "http://localhost:3000")
    for bad in (
        "https://a.example.com/",
        "ftp://a.example.com",
        "https://a.example.com/path",
        "a.example.com",
    ):
        assert "ADMIN_CORS_ALLOWED_ORIGINS" in problems(dev(tmp_path, ADMIN_CORS_ALLOWED_ORIGINS=bad)), bad
    star = problems({**prod_env, "CORS_ALLOWED_ORIGINS": "*"})
    assert star["CORS_ALLOWED_ORIGINS"] == ["'*' is allowed only in dev and test, not in prod"]


# --- Vault variables (no Vault contacted) --------------------------------------------------------


class ExplodingOverlay:
    def load(self) -> VaultSecrets:
        raise AssertionError("Vault must not be contacted when its configuration is invalid")


def test_vault_variables(tmp_path: Path, prod_env: dict[str, str]) -> None:
    env = dev(tmp_path, VAULT_ENABLED="true")
    assert problems(env)["VAULT_TOKEN"] == ["VAULT_TOKEN or VAULT_TOKEN_FILE is required when VAULT_ENABLED=true"]
    found = problems(dev(tmp_path, VAULT_ENABLED="true", VAULT_TOKEN_FILE=str(tmp_path / "missing")))
    assert "cannot read" in found["VAULT_TOKEN_FILE"][0] and "VAULT_TOKEN" not in found
    assert "VAULT_SECRET_PATH" in problems(dev(tmp_path, VAULT_SECRET_PATH="secret//x"))
    plain = {**prod_env, "VAULT_ENABLED": "yes", "VAULT_TOKEN": "t", "VAULT_ADDR": "http://vault:8200"}
    with pytest.raises(ConfigError) as caught:
        load_settings(plain, vault=ExplodingOverlay())  # type: ignore[arg-type]
    assert ("VAULT_ADDR", "must use https in prod (got 'http://vault:8200')") in caught.value.problems
    disabled = load({**prod_env, "VAULT_ADDR": "http://vault:8200"})
    assert not disabled.vault_enabled and disabled.vault_signing_keys is None


@pytest.mark.parametrize(("path", "mount", "base"), [
    ("secret/data/pandora/user-service", "secret", "pandora/user-service"),
    ("secret/pandora/user-service", "secret", "pandora/user-service"),
    ("/kv/data/app/", "kv", "app"),
    ("kv", "kv", ""),
])  # fmt: skip
def test_split_secret_path(path: str, mount: str, base: str) -> None:
    assert split_secret_path(path) == (mount, base)


class FakeOverlay:
    def __init__(self, secrets: VaultSecrets) -> None:
        self.secrets = secrets

    def load(self) -> VaultSecrets:
        return self.secrets


def test_vault_values_override_and_are_validated_after(tmp_path: Path) -> None:
    pem = ed25519_pem()
    secrets = VaultSecrets(
        db_password=Secret("from-vault"),
        signing_keys={"k1": Secret(pem)},
        active_kid="k1",
        service_tokens=Secret(f"billing:{TOKEN_B}"),
    )
    env = dev(
        tmp_path,
        VAULT_ENABLED="1",
        VAULT_TOKEN="t",
        DB_HOST="db",
        DB_USER="u",
        DB_NAME="n",
        DB_PASSWORD="env",
    )
    settings = load_settings(env, vault=FakeOverlay(secrets))  # type: ignore[arg-type]
    assert settings.db_password == Secret("from-vault")
    assert settings.resolved_database_url == Secret("postgresql://u:from-vault@db:5432/n?sslmode=disable")
    assert settings.vault_signing_keys == {"k1": Secret(pem)} and settings.vault_active_kid == "k1"
    bad = msgspec.structs.replace(secrets, active_kid="k2", service_tokens=Secret("nope"))
    found = problems_with(env, FakeOverlay(bad))
    assert found["VAULT_SECRET_PATH"] == ["jwt: active_kid names 'k2', which is not in signing_keys"]
    assert found["SERVICE_TOKENS"][0].endswith("(value from Vault)")


def problems_with(env: Mapping[str, str], overlay: object) -> dict[str, list[str]]:
    with pytest.raises(ConfigError) as caught:
        load_settings(env, vault=overlay)  # type: ignore[arg-type]
    return {name: [p for n, p in caught.value.problems if n == name] for name, _ in caught.value.problems}


# --- Requirements outside dev/test, all problems at once, redaction -------------------------------


def test_sandbox_reports_every_missing_requirement_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"APP_ENV": "sandbox", "SERVER_PORT": "99999", "LOCKOUT_THRESHOLD": "1"})
    names = [name for name, _ in caught.value.problems]
    assert names == [
        "SERVER_PORT",
        "LOCKOUT_THRESHOLD",
        "DB_HOST",
        "JWT_KEYS_DIR",
        "DATA_ENCRYPTION_KEY",
        "EMAIL_INDEX_KEY",
        "SERVICE_TOKENS",
    ]
    assert caught.value.exit_code == 3
    lines = str(caught.value).splitlines()
    assert lines[0] == "configuration error: SERVER_PORT: must be between 1 and 65535 (got 99999)"
    assert all(line.startswith("configuration error: ") for line in lines) and len(lines) == 7


def test_signing_key_alternatives_outside_dev(prod_env: dict[str, str]) -> None:
    env = {k: v for k, v in prod_env.items() if k != "JWT_KEYS_DIR"}
    assert "JWT_KEYS_DIR" in problems(env)
    assert load({**env, "JWT_PRIVATE_KEY": ed25519_pem()}).jwt_private_key is not None


def test_repr_never_shows_secrets(prod_env: dict[str, str]) -> None:
    pem = ed25519_pem()
    env = {**prod_env, "JWT_SECRET": "jwt-secret-" + "q" * 30, "VAULT_TOKEN": "vault-token-value"}
    env["DATABASE_URL"] = "postgresql://u:url-password@db.internal/users?sslmode=require"
    settings = load(env)
    settings = msgspec.structs.replace(settings, vault_signing_keys={"k": Secret(pem)})
    text = repr(settings) + str(settings)
    for value in (TOKEN_A, TOKEN_B, "db-pass", "db-pass%2Fword", "redis-password", EIK, "jwt-secret-",
                  "url-password", "vault-token-value", pem.splitlines()[1], str(DEK)):  # fmt: skip
        assert value not in text
    assert "Secret('**********')" in text
    assert repr(Secret("x")) == str(Secret("x")) == f"{Secret('x')}" == "Secret('**********')"


# --- Generated dev keys --------------------------------------------------------------------------


def test_ensure_dev_secrets_persists_and_reuses(tmp_path: Path) -> None:
    first = ensure_dev_secrets(load(dev(tmp_path)))
    path = tmp_path / "data" / "secrets.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert first.data_encryption_key is not None and len(first.data_encryption_key.get()) == 32
    assert first.email_index_key is not None and len(first.email_index_key.get()) >= 32
    second = ensure_dev_secrets(load(dev(tmp_path)))
    assert second.data_encryption_key == first.data_encryption_key
    assert second.email_index_key == first.email_index_key
    assert [p.name for p in path.parent.iterdir()] == ["secrets.json"]  # no staging file left behind


def test_ensure_dev_secrets_prefers_the_environment(tmp_path: Path) -> None:
    settings = ensure_dev_secrets(load(dev(tmp_path, EMAIL_INDEX_KEY=EIK)))
    assert settings.email_index_key == Secret(EIK) and settings.data_encryption_key is not None


def test_ensure_dev_secrets_is_a_no_op_outside_dev(prod_env: dict[str, str], tmp_path: Path) -> None:
    settings = load(prod_env)
    assert ensure_dev_secrets(settings) is settings
    assert not (tmp_path / "data").exists()


def test_ensure_dev_secrets_rejects_a_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secrets.json").write_text("{}")
    with pytest.raises(ConfigError) as caught:
        ensure_dev_secrets(load(dev(tmp_path)))
    assert caught.value.problems[0][0] == "DATA_DIR"


# --- Durations (SPEC §2.2) -----------------------------------------------------------------------

_DURATION_CHARACTERS = "0123456789.hms"


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("15m", 900.0), ("168h", 604800.0), ("1h30m", 5400.0), ("250ms", 0.25), ("0", 0.0),
    ("0s", 0.0), ("1.5h", 5400.0), ("1h0m0s1ms", 3600.001),
])  # fmt: skip
def test_parse_duration_examples(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "1", "h", "1d", "-1s", "1h1h", "30m1h", "1.s", ".5s", " 1s", "1s ", "1e3s", "\u0661s"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_format_duration_examples() -> None:
    assert [format_duration(s) for s in (0, 90, 5400, 0.25, 604800.5)] == [
        "0",
        "1m30s",
        "1h30m",
        "250ms",
        "168h500ms",
    ]
    with pytest.raises(ValueError):
        format_duration(-1)


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_duration_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(0, 10_000), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_duration_parts_add_up(hours: int, minutes: int, secs: int, millis: int) -> None:
    text = f"{hours}h{minutes}m{secs}s{millis}ms"
    expected = (hours * 3_600_000 + minutes * 60_000 + secs * 1000 + millis) / 1000
    assert parse_duration(text) == expected


@given(st.text(alphabet=st.characters(exclude_characters=_DURATION_CHARACTERS), min_size=1))
def test_duration_rejects_garbage(garbage: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(garbage)


@given(
    st.from_regex(r"[0-9]{1,4}(ms|h|m|s)", fullmatch=True),
    st.text(min_size=1, max_size=5).filter(lambda t: any(c not in _DURATION_CHARACTERS for c in t)),
)
def test_duration_rejects_a_valid_prefix_with_garbage(valid: str, garbage: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(valid + garbage)
    with pytest.raises(ValueError):
        parse_duration(garbage + valid)
