"""Signing keys for access tokens, the JWKS and rotation without restart (SPEC §6.2)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OctKey, OKPKey
from loguru import logger

Algorithm = Literal["EdDSA", "HS256"]
KID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
ACTIVE_KID_FILE = "active_kid"
MIN_HS256_SECRET_LENGTH = 32


class KeyMaterialError(Exception):
    """Key material is missing, unreadable or invalid; the message names the problem (never the key)."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One key: `private_key` signs (and verifies); `public_jwk` is its JWKS entry (None for HS256)."""

    kid: str
    private_key: OKPKey | OctKey
    public_jwk: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class KeySet:
    """Every key that verifies, and the one that signs."""

    active_kid: str
    keys: Mapping[str, SigningKey]
    algorithm: Algorithm

    def __post_init__(self) -> None:
        if self.active_kid not in self.keys:
            raise KeyMaterialError(f"active kid {self.active_kid!r} names no key")

    @property
    def active(self) -> SigningKey:
        return self.keys[self.active_kid]

    def fingerprint(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        """Public identity of the set, to tell whether a rescan changed anything."""
        public = tuple(sorted((kid, (key.public_jwk or {}).get("x", "")) for kid, key in self.keys.items()))
        return self.algorithm, self.active_kid, public


def check_kid(kid: str) -> str:
    if not KID_PATTERN.fullmatch(kid):
        raise KeyMaterialError(f"kid {kid!r} does not match ^[A-Za-z0-9._-]{{1,64}}$")
    return kid


def _public_jwk(key: OKPKey, kid: str) -> dict[str, str]:
    x = str(key.as_dict(private=False)["x"])
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": "EdDSA"}


def _parse_ed25519_pem(pem: str | bytes, what: str) -> OKPKey:
    data = pem.encode("utf-8") if isinstance(pem, str) else pem
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyMaterialError(f"{what}: encrypted private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyMaterialError(f"{what}: not a PKCS#8 PEM private key") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyMaterialError(f"{what}: not an Ed25519 private key")
    return OKPKey.import_key(private)


def _eddsa_key(pem: str | bytes, kid: str | None, what: str) -> SigningKey:
    okp = _parse_ed25519_pem(pem, what)
    kid = check_kid(kid) if kid is not None else okp.thumbprint()
    return SigningKey(kid=kid, private_key=okp, public_jwk=_public_jwk(okp, kid))


def _eddsa_keyset(keys: dict[str, SigningKey], active_kid: str | None, where: str) -> KeySet:
    if not keys:
        raise KeyMaterialError(f"{where}: holds no signing key")
    if active_kid is None:
        active_kid = max(keys)
    elif active_kid not in keys:
        raise KeyMaterialError(f"{where}: active_kid {active_kid!r} names a missing key")
    return KeySet(active_kid=active_kid, keys=keys, algorithm="EdDSA")


def load_eddsa_pem(pem: str, kid: str | None = None) -> KeySet:
    """One key (`JWT_PRIVATE_KEY`); the kid defaults to the RFC 7638 thumbprint of the public key."""
    key = _eddsa_key(pem, kid, "JWT_PRIVATE_KEY")
    return KeySet(active_kid=key.kid, keys={key.kid: key}, algorithm="EdDSA")


def load_eddsa_mapping(keys: Mapping[str, str], active_kid: str | None) -> KeySet:
    """Keys from Vault's `signing_keys` (kid -> PKCS#8 PEM) and `active_kid` (default: the greatest kid)."""
    loaded = {kid: _eddsa_key(pem, kid, f"signing_keys[{kid!r}]") for kid, pem in keys.items()}
    return _eddsa_keyset(loaded, active_kid, "signing_keys")


def load_eddsa_keys_dir(path: str | Path) -> KeySet:
    """Every `<kid>.pem` of `JWT_KEYS_DIR`; the `active_kid` file names the signer, else the greatest kid."""
    directory = Path(path)
    try:
        entries = sorted(entry for entry in directory.iterdir() if not entry.name.startswith("."))
    except OSError as exc:
        raise KeyMaterialError(f"{directory}: not a readable directory ({exc.strerror})") from None
    keys: dict[str, SigningKey] = {}
    for entry in entries:
        if entry.suffix != ".pem" or not entry.is_file():
            continue
        kid = check_kid(entry.stem)
        keys[kid] = _eddsa_key(_read(entry), kid, str(entry))
    active_file = directory / ACTIVE_KID_FILE
    active_kid = _read(active_file).strip() if active_file.exists() else None
    return _eddsa_keyset(keys, active_kid, str(directory))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyMaterialError(f"{path}: unreadable ({exc})") from None


def generate_dev_key(data_dir: str | Path) -> KeySet:
    """dev/test only: an Ed25519 key made once as `data_dir/keys/<kid>.pem` (mode 0600), then reused."""
    keys_dir = Path(data_dir) / "keys"
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _exclusive_lock(keys_dir / ".lock"):  # two processes starting together must share one key
        if not any(keys_dir.glob("*.pem")):
            private = Ed25519PrivateKey.generate()
            kid = OKPKey.import_key(private).thumbprint()
            pem = private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            fd = os.open(keys_dir / f"{kid}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
        return load_eddsa_keys_dir(keys_dir)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def hs256_keyset(secret: str, kid: str = "static-v1") -> KeySet:
    """The single HS256 key of `JWT_SECRET` (at least 32 characters); it is never published."""
    if len(secret) < MIN_HS256_SECRET_LENGTH:
        raise KeyMaterialError(f"JWT_SECRET: at least {MIN_HS256_SECRET_LENGTH} characters are required")
    octet_key = OctKey.import_key(secret.encode("utf-8"))
    key = SigningKey(kid=check_kid(kid), private_key=octet_key, public_jwk=None)
    return KeySet(active_kid=key.kid, keys={key.kid: key}, algorithm="HS256")


def jwks(keyset: KeySet) -> dict[str, list[dict[str, Any]]]:
    """The JWKS document: every EdDSA public key, the active one first; `{"keys": []}` for HS256."""
    if keyset.algorithm != "EdDSA":
        return {"keys": []}
    others = sorted((kid for kid in keyset.keys if kid != keyset.active_kid), reverse=True)
    ordered = [keyset.active_kid, *others]
    return {"keys": [dict(keyset.keys[kid].public_jwk or {}) for kid in ordered]}


class KeyRing:
    """Holds the current KeySet; `swap` replaces it atomically (readers take one snapshot per operation)."""

    def __init__(self, keyset: KeySet) -> None:
        self._current = keyset

    @property
    def current(self) -> KeySet:
        return self._current

    def swap(self, keyset: KeySet) -> None:
        self._current = keyset


class KeyDirWatcher:
    """Reloads `JWT_KEYS_DIR` into a KeyRing; `config.refresher` runs `rescan()` every 60 s and on SIGHUP."""

    def __init__(self, path: str | Path, keyring: KeyRing) -> None:
        self.path = Path(path)
        self.keyring = keyring
        self.last_error: str | None = None

    def rescan(self) -> bool:
        """Swap in the directory's keys if they changed; on bad material keep the last good set and log ERROR.

        It reads a few small files: call it from a worker thread (`asyncio.to_thread`) in async code.
        """
        try:
            keyset = load_eddsa_keys_dir(self.path)
        except KeyMaterialError as exc:
            self.last_error = str(exc)
            logger.error("signing keys not reloaded, the previous keys stay in use: {}", exc)
            return False
        self.last_error = None
        if keyset.fingerprint() == self.keyring.current.fingerprint():
            return False
        self.keyring.swap(keyset)
        logger.info("signing keys reloaded: active kid {}, {} keys", keyset.active_kid, len(keyset.keys))
        return True
