"""`APP_ENV` profiles (SPEC §10.2): the defaults and permissions that differ per environment."""

from __future__ import annotations

from typing import NamedTuple

APP_ENVS = ("dev", "test", "sandbox", "audit", "prod")
# Environments with embedded servers, generated keys, and relaxed rules.
DEV_LIKE = frozenset({"dev", "test"})


class Profile(NamedTuple):
    """Per-environment defaults."""

    log_level: str
    log_format: str
    auto_migrate: bool
    grpc_reflection: bool
    audit_logs_keep_for_days: int


PROFILES: dict[str, Profile] = {
    "dev": Profile("debug", "console", True, True, 30),
    "test": Profile("warning", "json", True, False, 30),
    "sandbox": Profile("info", "json", False, True, 90),
    "audit": Profile("info", "json", False, False, 2555),
    "prod": Profile("info", "json", False, False, 2555),
}


def is_dev_like(app_env: str) -> bool:
    """True for `dev` and `test`."""
    return app_env in DEV_LIKE
