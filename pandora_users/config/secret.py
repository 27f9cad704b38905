"""A wrapper that keeps secret values out of reprs, logs and tracebacks (SPEC §7.9)."""

from __future__ import annotations

import hmac
from typing import Generic, TypeVar

T = TypeVar("T")

_MASK = "Secret('**********')"


class Secret(Generic[T]):
    """Holds a secret value; `repr`/`str` never show it, `.get()` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def get(self) -> T:
        """Return the secret value."""
        return self._value

    def __repr__(self) -> str:
        return _MASK

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        mine, theirs = self._value, other._value
        if isinstance(mine, str) and isinstance(theirs, str):
            return hmac.compare_digest(mine.encode(), theirs.encode())
        if isinstance(mine, bytes) and isinstance(theirs, bytes):
            return hmac.compare_digest(mine, theirs)
        return bool(mine == theirs)

    def __hash__(self) -> int:
        return hash((Secret, self._value))
