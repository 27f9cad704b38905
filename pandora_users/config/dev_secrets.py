"""Data-protection keys generated once in `dev`/`test` (SPEC §10.1) and kept in `DATA_DIR/secrets.json`.

The file is created atomically with mode 0600 (written aside, then hard-linked into place, so two processes
starting together agree on one set of keys) and reused on later starts.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from pathlib import Path

import msgspec

from pandora_users.config.errors import ConfigError
from pandora_users.config.profiles import is_dev_like
from pandora_users.config.secret import Secret
from pandora_users.config.settings import Settings

SECRETS_FILE = "secrets.json"


class _DevSecrets(msgspec.Struct, frozen=True):
    data_encryption_key: str  # base64 of 32 bytes
    email_index_key: str


def ensure_dev_secrets(settings: Settings) -> Settings:
    """In dev/test, fill a missing DATA_ENCRYPTION_KEY / EMAIL_INDEX_KEY from `DATA_DIR/secrets.json`.

    The file is generated on first use. Values from the environment win. Elsewhere this is a no-op.
    """
    if not is_dev_like(settings.app_env):
        return settings
    if settings.data_encryption_key is not None and settings.email_index_key is not None:
        return settings
    path = settings.data_dir / SECRETS_FILE
    try:
        stored = _load(path) if path.exists() else _create(path)
    except OSError as exc:
        raise ConfigError([("DATA_DIR", f"cannot keep generated keys in {path}: {exc.strerror or exc}")]) from None
    return msgspec.structs.replace(
        settings,
        data_encryption_key=settings.data_encryption_key or Secret(_decode_key(path, stored)),
        email_index_key=settings.email_index_key or Secret(stored.email_index_key),
    )


def _load(path: Path) -> _DevSecrets:
    try:
        stored = msgspec.json.decode(path.read_bytes(), type=_DevSecrets)
    except msgspec.DecodeError as exc:
        raise ConfigError([("DATA_DIR", f"{path} is not a valid generated-keys file: {exc}")]) from None
    if len(stored.email_index_key) < 32:
        raise ConfigError([("DATA_DIR", f"{path}: email_index_key is shorter than 32 characters")])
    return stored


def _create(path: Path) -> _DevSecrets:
    """Write fresh keys beside `path`, then link them into place unless another process won the race."""
    fresh = _DevSecrets(
        data_encryption_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        email_index_key=secrets.token_urlsafe(48),
    )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(msgspec.json.encode(fresh) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(staging, path)
        except FileExistsError:
            return _load(path)
        return fresh
    finally:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()


def _decode_key(path: Path, stored: _DevSecrets) -> bytes:
    try:
        key = base64.b64decode(stored.data_encryption_key, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError([("DATA_DIR", f"{path}: data_encryption_key is not base64 of 32 bytes")])
    return key
