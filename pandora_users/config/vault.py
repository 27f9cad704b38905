"""The Vault overlay (SPEC §10.3): KV v2 secrets that override environment variables.

`load()` runs once at start-up and fails hard (exit code 4) when Vault is unreachable or denies access.
`refresh()` and `renew_token_if_due()` run periodically afterwards (see `config.refresher`); a failure there
keeps the last good values, logs an ERROR and raises `VaultRefreshError` for the caller to count.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import hvac
import hvac.exceptions
import msgspec
import requests
from loguru import logger

from pandora_users.config.env_edge import parse_service_tokens
from pandora_users.config.env_vault import (
    DEFAULT_SECRET_PATH,
    split_secret_path,
    token_from_file_content,
    vault,
)
from pandora_users.config.errors import EXIT_VAULT_UNAVAILABLE, ConfigError
from pandora_users.config.jwt_keys import key_set_problems
from pandora_users.config.profiles import APP_ENVS
from pandora_users.config.reader import EnvReader
from pandora_users.config.secret import Secret

# (secret name, key) → the environment variable a Vault value replaces.
REPLACES: dict[tuple[str, str], str] = {
    ("jwt", "secret"): "JWT_SECRET",
    ("database", "password"): "DB_PASSWORD",
    ("redis", "password"): "REDIS_PASSWORD",
    ("grpc", "service_tokens"): "SERVICE_TOKENS",
    ("crypto", "data_encryption_key"): "DATA_ENCRYPTION_KEY",
    ("crypto", "email_index_key"): "EMAIL_INDEX_KEY",
}
STARTUP_SECRETS = ("jwt", "database", "redis", "grpc", "crypto")
# The variables of the secrets applied at run time, `jwt` and `grpc` (key problems go under VAULT_SECRET_PATH).
REFRESHED_VARIABLES = frozenset({"JWT_SECRET", "SERVICE_TOKENS", "VAULT_SECRET_PATH"})


class VaultSecrets(msgspec.Struct, frozen=True):
    """Values read from Vault (None: absent, the environment applies) and problems with their shape."""

    jwt_secret: Secret[str] | None = None
    signing_keys: dict[str, Secret[str]] | None = None
    active_kid: str | None = None
    db_password: Secret[str] | None = None
    redis_password: Secret[str] | None = None
    service_tokens: Secret[str] | None = None
    data_encryption_key: Secret[str] | None = None
    email_index_key: Secret[str] | None = None
    problems: tuple[tuple[str, str], ...] = ()

    def env_overrides(self) -> dict[str, str]:
        """The environment variables these values replace, for the values present."""
        values = {
            "JWT_SECRET": self.jwt_secret,
            "DB_PASSWORD": self.db_password,
            "REDIS_PASSWORD": self.redis_password,
            "SERVICE_TOKENS": self.service_tokens,
            "DATA_ENCRYPTION_KEY": self.data_encryption_key,
            "EMAIL_INDEX_KEY": self.email_index_key,
        }
        return {name: value.get() for name, value in values.items() if value is not None}


class VaultRefreshError(Exception):
    """A periodic Vault read or token renewal failed; the last good values stay in use."""


class _ReadError(Exception):
    def __init__(self, variable: str, message: str) -> None:
        super().__init__(message)
        self.variable = variable
        self.message = message


class VaultOverlay:
    """Reads the service's KV v2 secrets with hvac. The token never appears in reprs or messages."""

    def __init__(
        self,
        addr: str,
        token: str,
        secret_path: str = DEFAULT_SECRET_PATH,
        *,
        token_file: Path | None = None,
        ca_cert: str | None = None,
        timeout: int = 5,
    ) -> None:
        self._mount, self._base = split_secret_path(secret_path)
        self._addr = addr
        self._token_file = token_file
        # verify=None lets hvac apply the process's VAULT_CACERT/VAULT_CAPATH, else the system CAs.
        self._client = hvac.Client(url=addr, token=token, verify=ca_cert or None, timeout=timeout)
        self._lease: int | None = None
        self.current: VaultSecrets | None = None
        self.latest: VaultSecrets | None = None  # everything the last successful refresh read
        self.error_count = 0
        self.renew_in: float | None = None

    def __repr__(self) -> str:
        return f"VaultOverlay(addr={self._addr!r}, mount={self._mount!r}, base={self._base!r})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> VaultOverlay:
        """Build from the VAULT_* variables; raises `ConfigError` (exit code 3) when they are invalid.

        `VAULT_CACERT` (the Vault clients' usual variable) names a CA bundle for an https `VAULT_ADDR`.
        """
        reader = EnvReader(environ)
        fields = vault(reader, reader.choice("APP_ENV", "dev", APP_ENVS, fold_case=True))
        token: Secret[str] | None = fields["vault_token"]
        if token is None and not reader.problems:
            reader.problem("VAULT_TOKEN", "VAULT_TOKEN or VAULT_TOKEN_FILE is required to use Vault")
        if reader.problems or token is None:
            raise ConfigError(reader.problems)
        return cls(
            fields["vault_addr"],
            token.get(),
            fields["vault_secret_path"],
            token_file=None if reader.is_set("VAULT_TOKEN") else fields["vault_token_file"],
            ca_cert=reader.optional("VAULT_CACERT"),
        )

    def close(self) -> None:
        """Release the HTTP connections."""
        self._client.adapter.close()

    def location(self, name: str) -> str:
        """The full KV v2 path of secret `name`, as used in messages."""
        return "/".join(p for p in (self._mount, "data", self._base, name) if p)

    def load(self) -> VaultSecrets:
        """Read every secret of §10.3 at start-up; unreachable or denied → `ConfigError` with exit code 4."""
        try:
            raw = self._read(STARTUP_SECRETS)
        except _ReadError as exc:
            raise ConfigError([(exc.variable, exc.message)], EXIT_VAULT_UNAVAILABLE) from None
        self.current = _decode(raw, self.location)
        return self.current

    def refresh(self) -> VaultSecrets:
        """Re-read the secrets; apply those that change at run time (`jwt`, `grpc`), else keep the last good ones.

        Start-up-only secrets are read too and kept in `latest` (not applied), so that a caller can tell
        that a restart is needed; a malformed one of them does not fail the refresh.
        """
        self._reload_token_file()
        try:
            fresh = _decode(self._read(STARTUP_SECRETS), self.location)
        except _ReadError as exc:
            self._fail(exc.message)
        problems = [problem for problem in fresh.problems if problem[0] in REFRESHED_VARIABLES]
        if fresh.signing_keys is not None:
            keys = {kid: pem.get() for kid, pem in fresh.signing_keys.items()}
            problems += [("VAULT_SECRET_PATH", p) for p in key_set_problems(keys, fresh.active_kid)]
        if fresh.service_tokens is not None:
            problems += [("SERVICE_TOKENS", p) for p in parse_service_tokens(fresh.service_tokens.get())[1]]
        if problems:
            self._fail("; ".join(f"{name}: {problem}" for name, problem in problems))
        self.current = msgspec.structs.replace(
            self.current or VaultSecrets(),
            jwt_secret=fresh.jwt_secret,
            signing_keys=fresh.signing_keys,
            active_kid=fresh.active_kid,
            service_tokens=fresh.service_tokens,
        )
        self.latest = fresh
        return self.current

    def renew_token_if_due(self) -> bool:
        """Renew a renewable token once two thirds of its TTL have passed; True when it was renewed.

        `renew_in` is then the number of seconds until the next renewal is due (None: never). A token
        replaced in `VAULT_TOKEN_FILE` is picked up first.
        """
        self._reload_token_file()
        try:
            info: dict[str, Any] = self._client.auth.token.lookup_self()["data"]
            ttl = int(info.get("ttl") or 0)
            if not info.get("renewable") or ttl <= 0:
                self.renew_in = None
                return False
            threshold = (self._lease or int(info.get("creation_ttl") or ttl)) / 3
            if ttl > threshold:
                self.renew_in = ttl - threshold
                return False
            response: dict[str, Any] = self._client.auth.token.renew_self()
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            self._fail(f"token renewal failed: {self._describe(exc)}")
        self._lease = int(response["auth"]["lease_duration"])
        self.renew_in = self._lease * 2 / 3
        return True

    def _read(self, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for name in names:
            path = f"{self._base}/{name}" if self._base else name
            try:
                response = self._client.secrets.kv.v2.read_secret_version(
                    path=path, mount_point=self._mount, raise_on_deleted_version=True
                )
            except hvac.exceptions.InvalidPath as exc:
                if exc.errors:  # e.g. "no handler for route": the mount does not exist
                    raise _ReadError("VAULT_SECRET_PATH", f"{self.location(name)}: {self._describe(exc)}") from None
                continue  # no such secret: the environment applies
            except (hvac.exceptions.Unauthorized, hvac.exceptions.Forbidden) as exc:
                message = f"Vault denied access to {self.location(name)}: {self._describe(exc)}"
                raise _ReadError("VAULT_TOKEN", message) from None
            except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
                raise _ReadError("VAULT_ADDR", self._describe(exc)) from None
            data = (response or {}).get("data") or {}
            found[name] = data.get("data") or {}
        return found

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, requests.exceptions.RequestException):
            return f"Vault at {self._addr} is unreachable ({type(exc).__name__})"
        if isinstance(exc, hvac.exceptions.VaultError):
            errors = "; ".join(str(e).strip().replace("\n", " ") for e in exc.errors or [])
            return f"Vault at {self._addr} answered {type(exc).__name__}" + (f": {errors}" if errors else "")
        return type(exc).__name__

    def _reload_token_file(self) -> None:
        if self._token_file is None:
            return
        try:
            token = token_from_file_content(self._token_file.read_bytes())
        except OSError as exc:
            logger.warning("cannot re-read VAULT_TOKEN_FILE {}: {}", self._token_file, exc.strerror)
            return
        if token is not None and token != self._client.token:
            self._client.token = token
            self._lease = None

    def _fail(self, message: str) -> NoReturn:
        self.error_count += 1
        logger.error("Vault refresh failed, keeping the last good values: {}", message)
        raise VaultRefreshError(message)


def _decode(raw: Mapping[str, Mapping[str, Any]], location: Callable[[str], str]) -> VaultSecrets:
    """Turn the raw KV data into `VaultSecrets`, recording (never echoing) values of the wrong shape."""
    problems: list[tuple[str, str]] = []

    def text(name: str, key: str) -> Secret[str] | None:
        value = raw.get(name, {}).get(key)
        if isinstance(value, list) and key == "service_tokens" and all(isinstance(v, str) for v in value):
            value = ",".join(value)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            problems.append((REPLACES[(name, key)], f"the key {key!r} at {location(name)} must be a string"))
            return None
        return Secret(value)

    keys, active = _signing_keys(raw.get("jwt", {}), location("jwt"), problems)
    return VaultSecrets(
        jwt_secret=text("jwt", "secret"),
        signing_keys=keys,
        active_kid=active,
        db_password=text("database", "password"),
        redis_password=text("redis", "password"),
        service_tokens=text("grpc", "service_tokens"),
        data_encryption_key=text("crypto", "data_encryption_key"),
        email_index_key=text("crypto", "email_index_key"),
        problems=tuple(problems),
    )


def _signing_keys(
    jwt: Mapping[str, Any], where: str, problems: list[tuple[str, str]]
) -> tuple[dict[str, Secret[str]] | None, str | None]:
    keys: Any = jwt.get("signing_keys")
    active: Any = jwt.get("active_kid") or None
    if active is not None and not isinstance(active, str):
        problems.append(("VAULT_SECRET_PATH", f"the key 'active_kid' at {where} must be a string"))
        active = None
    if keys is None or keys == "":
        return None, active
    if isinstance(keys, str):
        try:
            keys = json.loads(keys)
        except ValueError:
            keys = None
    if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
        problems.append(("VAULT_SECRET_PATH", f"the key 'signing_keys' at {where} must be a JSON object kid → PEM"))
        return None, active
    return {kid: Secret(pem) for kid, pem in keys.items()}, active
