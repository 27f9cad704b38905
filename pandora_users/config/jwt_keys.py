"""Start-up checks of EdDSA signing keys (SPEC §6.2): PEM content, `JWT_KEYS_DIR` layout, Vault key sets.

Only validation lives here; loading, rotation and JWKS belong to the token module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

KID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
ACTIVE_KID_FILE = "active_kid"


def is_valid_kid(kid: str) -> bool:
    """True when `kid` matches `^[A-Za-z0-9._-]{1,64}$`."""
    return KID_PATTERN.fullmatch(kid) is not None


def pem_problem(pem: str | bytes) -> str | None:
    """Why `pem` is not an unencrypted PKCS#8 PEM Ed25519 private key, or None. Never echoes the key."""
    data = pem.encode() if isinstance(pem, str) else pem
    if b"-----BEGIN PRIVATE KEY-----" not in data:
        return "is not a PKCS#8 PEM private key (expected -----BEGIN PRIVATE KEY-----)"
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "is not a readable PKCS#8 PEM private key"
    if not isinstance(key, Ed25519PrivateKey):
        return "is not an Ed25519 private key"
    return None


def keys_dir_problems(directory: Path) -> list[str]:
    """Problems with a `JWT_KEYS_DIR`: unreadable, no `<kid>.pem`, bad kid or key, dangling `active_kid`."""
    try:
        entries = sorted(p for p in directory.iterdir() if p.suffix == ".pem")
    except OSError as exc:
        return [f"cannot read directory {directory}: {exc.strerror or exc}"]
    problems: list[str] = []
    kids: set[str] = set()
    for entry in entries:
        if not is_valid_kid(entry.stem):
            problems.append(f"{entry.name}: the kid {entry.stem!r} does not match ^[A-Za-z0-9._-]{{1,64}}$")
            continue
        try:
            problem = pem_problem(entry.read_bytes())
        except OSError as exc:
            problem = f"cannot be read: {exc.strerror or exc}"
        if problem:
            problems.append(f"{entry.name} {problem}")
        kids.add(entry.stem)
    if not entries:
        problems.append(f"{directory} holds no <kid>.pem key")
    problems.extend(_active_kid_problems(directory / ACTIVE_KID_FILE, kids))
    return problems


def _active_kid_problems(path: Path, kids: set[str]) -> list[str]:
    try:
        active = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        return [f"cannot read {path}: {exc}"]
    if active not in kids:
        return [f"{path.name} names {active!r}, which is not a key in the directory"]
    return []


def key_set_problems(keys: Mapping[str, str], active_kid: str | None) -> list[str]:
    """Problems with a kid → PEM key set (from Vault) and its optional active kid."""
    problems: list[str] = []
    if not keys:
        problems.append("signing_keys holds no key")
    for kid, pem in sorted(keys.items()):
        if not is_valid_kid(kid):
            problems.append(f"signing_keys: the kid {kid!r} does not match ^[A-Za-z0-9._-]{{1,64}}$")
        elif problem := pem_problem(pem):
            problems.append(f"signing_keys[{kid!r}] {problem}")
    if active_kid is not None and active_kid not in keys:
        problems.append(f"active_kid names {active_kid!r}, which is not in signing_keys")
    return problems
