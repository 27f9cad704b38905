"""Field rules of SPEC §2.7: canonical emails, personal names, admin reasons."""

from __future__ import annotations

import re
import unicodedata

from pandora_users.domain.errors import FieldError, InvalidRequest

_LOCAL_CHARS = re.compile(r"^[a-z0-9!#$%&'*+/=?^_{|}~.-]{1,64}$")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def canonical_email(raw: str) -> str | None:
    """Trim, NFKC, lower-case and validate an email; None when it is not a valid address."""
    email = unicodedata.normalize("NFKC", raw.strip()).lower()
    if not email.isascii() or not 3 <= len(email) <= 254 or email.count("@") != 1:
        return None
    local, domain = email.split("@")
    if not _LOCAL_CHARS.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        return None
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return None
    return email


def require_email(raw: str, field: str = "email") -> str:
    """The canonical email, or `invalid_request` naming the field."""
    email = canonical_email(raw)
    if email is None:
        raise InvalidRequest(details=[FieldError(field, "must be a valid email address")])
    return email


def name_problem(raw: str) -> str | None:
    """Why a first or last name is not acceptable, or None when it is."""
    name = unicodedata.normalize("NFC", raw.strip())
    if not 1 <= len(name) <= 100:
        return "must be 1 to 100 characters"
    for ch in name:
        if unicodedata.category(ch) == "Cc" or ch in _BIDI_CONTROLS:
            return "must not contain control or bidirectional formatting characters"
    if all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in name):
        return "must contain a visible character"
    return None


def clean_name(raw: str, field: str) -> str:
    """The trimmed NFC name, or `invalid_request` naming the field."""
    problem = name_problem(raw)
    if problem is not None:
        raise InvalidRequest(details=[FieldError(field, problem)])
    return unicodedata.normalize("NFC", raw.strip())


def clean_reason(raw: str | None) -> str | None:
    """A trimmed admin reason (1..1000 code points, newlines and tabs allowed); empty means absent."""
    if raw is None:
        return None
    reason = raw.strip()
    if not reason:
        return None
    if len(reason) > 1000:
        raise InvalidRequest(details=[FieldError("reason", "must be at most 1000 characters")])
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t\r" for ch in reason):
        raise InvalidRequest(details=[FieldError("reason", "must not contain control characters")])
    return reason
