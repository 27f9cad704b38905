"""AES-256-GCM helpers for personal fields and for wrapping per-user data keys."""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENC_PREFIX = "enc1:"


class DecryptionError(Exception):
    """Ciphertext that does not authenticate under the given key and associated data."""


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError("ciphertext does not authenticate") from exc


def encrypt_field(key: bytes, value: str, aad: str) -> str:
    """A personal value as `enc1:<base64url(nonce | ciphertext | tag)>`."""
    sealed = seal(key, value.encode(), aad.encode())
    return ENC_PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def decrypt_field(key: bytes, token: str, aad: str) -> str:
    body = token[len(ENC_PREFIX) :]
    sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    return open_sealed(key, sealed, aad.encode()).decode()


def is_encrypted(value: object) -> bool:
    return isinstance(value, str) and value.startswith(ENC_PREFIX)
