"""The password policy of SPEC §7.1: normalisation, length, blocklist and context rules."""

from __future__ import annotations

import functools
import itertools
import unicodedata
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from pandora_users.domain.errors import FieldError, InvalidRequest, WeakPassword

MAX_PASSWORD_BYTES = 512
_BUNDLED_FILE = "common-passwords.txt"
_FORBIDDEN_WORD = "pandora"


def normalize_password(pw: str) -> str:
    """Unicode NFKC, with no trimming, case change or truncation."""
    return unicodedata.normalize("NFKC", pw)


def _fold(value: str) -> str:
    # The comparison form for the blocklist and the context rules (case-insensitive, compatibility-folded).
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())


def _utf8_length(value: str) -> int:
    # surrogatepass: a lone surrogate from a JSON escape must count, not crash the check.
    return len(value.encode("utf-8", "surrogatepass"))


class Blocklist:
    """Case-folded common passwords: the bundled list plus an optional operator file."""

    __slots__ = ("_entries",)

    def __init__(self, entries: frozenset[str]) -> None:
        self._entries = entries

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> Blocklist:
        """Fold every non-empty line (line endings removed, nothing else trimmed)."""
        return cls(frozenset(_fold(line) for line in (raw.rstrip("\r\n") for raw in lines) if line))

    @classmethod
    def bundled(cls) -> Blocklist:
        """The bundled list, read on first use and cached for the life of the process."""
        return _bundled()

    @classmethod
    def load(cls, extra_file: str | Path | None = None) -> Blocklist:
        """The bundled list, plus the entries of `extra_file` (`PASSWORD_BLOCKLIST_FILE`) when given."""
        bundled = cls.bundled()
        if extra_file is None:
            return bundled
        with Path(extra_file).open(encoding="utf-8") as handle:
            extra = cls.from_lines(handle)
        return cls(bundled.entries | extra.entries)

    @property
    def entries(self) -> frozenset[str]:
        return self._entries

    def __contains__(self, password: object) -> bool:
        return isinstance(password, str) and _fold(password) in self._entries

    def __len__(self) -> int:
        return len(self._entries)


@functools.cache
def _bundled() -> Blocklist:
    source = resources.files("pandora_users.security").joinpath("data", _BUNDLED_FILE)
    return Blocklist.from_lines(source.read_text(encoding="utf-8").splitlines())


def is_repetitive_or_sequential(password: str) -> bool:
    """One character repeated, or a run of consecutive digits or letters, ascending or descending."""
    folded = _fold(password)
    if len(folded) < 2:
        return False
    if len(set(folded)) == 1:
        return True
    if folded.isascii() and folded.isdigit():
        steps = {(int(b) - int(a)) % 10 for a, b in itertools.pairwise(folded)}
        return steps in ({1}, {9})  # 9 == -1 mod 10: "3210987" descends through the wrap
    if folded.isalpha():
        steps = {ord(b) - ord(a) for a, b in itertools.pairwise(folded)}
        return steps in ({1}, {-1})
    return False


def _has_context_data(password: str, email: str | None) -> bool:
    folded = _fold(password)
    if _FORBIDDEN_WORD in folded:
        return True
    if not email:
        return False
    local_part = email.rsplit("@", 1)[0]
    return folded in {_fold(email), _fold(local_part)}


def _first_violation(
    password: str,
    *,
    email: str | None,
    min_length: int,
    max_length: int,
    blocklist: Blocklist,
    current_password: str | None,
) -> str | None:
    if len(password) < min_length:
        return "too_short"
    if len(password) > max_length or _utf8_length(password) > MAX_PASSWORD_BYTES:
        return "too_long"
    if current_password is not None and password == normalize_password(current_password):
        return "same_as_current"
    if _has_context_data(password, email):
        return "contains_personal_or_context_data"
    if is_repetitive_or_sequential(password):
        return "repetitive_or_sequential"
    if password in blocklist:
        return "common_password"
    return None


def check_password_policy(
    password: str,
    *,
    field: str,
    email: str | None,
    min_length: int,
    max_length: int,
    blocklist: Blocklist,
    current_password: str | None = None,
) -> None:
    """Raise `WeakPassword` naming `field` and the first broken rule; the password is NFKC-normalised first.

    A password holding U+0000 is not a policy matter but a malformed field (SPEC §2.7): `InvalidRequest`.
    """
    normalized = normalize_password(password)
    if "\x00" in normalized:
        raise InvalidRequest(details=[FieldError(field, "must not contain U+0000")])
    rule = _first_violation(
        normalized,
        email=email,
        min_length=min_length,
        max_length=max_length,
        blocklist=blocklist,
        current_password=current_password,
    )
    if rule is not None:
        raise WeakPassword(details=[FieldError(field, rule)])
