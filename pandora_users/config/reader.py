"""Typed reads of environment variables that collect every problem instead of stopping at the first.

A value that fails to parse is recorded as a problem and replaced by the default, so that the remaining
checks still run; `ok()` tells the cross-variable checks which inputs are trustworthy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from pandora_users.config.durations import format_duration, parse_duration
from pandora_users.config.secret import Secret

_INTEGER = re.compile(r"-?[0-9]{1,18}")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class EnvReader:
    """Reads variables from a mapping; an empty value counts as unset.

    Problems with the variables named in `from_vault` say that the value came from Vault.
    """

    def __init__(self, environ: Mapping[str, str], *, from_vault: frozenset[str] = frozenset()) -> None:
        self._env = environ
        self._from_vault = from_vault
        self.problems: list[tuple[str, str]] = []
        self.warnings: list[tuple[str, str]] = []
        self._failed: set[str] = set()

    def problem(self, name: str, message: str) -> None:
        """Record a problem with variable `name`."""
        if name in self._from_vault:
            message += " (value from Vault)"
        self.problems.append((name, message))
        self._failed.add(name)

    def warn(self, name: str, message: str) -> None:
        """Record a warning for the composition root to log once logging is set up."""
        self.warnings.append((name, message))

    def ok(self, *names: str) -> bool:
        """True when none of `names` has had a problem so far."""
        return not self._failed.intersection(names)

    def is_set(self, name: str) -> bool:
        """True when the variable is present and not blank."""
        return self.raw(name) is not None

    def raw(self, name: str) -> str | None:
        """The value as given, or None when unset or blank."""
        value = self._env.get(name)
        if value is None or not value.strip():
            return None
        return value

    def optional(self, name: str) -> str | None:
        """The value without surrounding whitespace, or None."""
        value = self.raw(name)
        return None if value is None else value.strip()

    def text(self, name: str, default: str) -> str:
        """The value without surrounding whitespace, or `default`."""
        value = self.optional(name)
        return default if value is None else value

    def secret(self, name: str) -> Secret[str] | None:
        """The value wrapped in a `Secret` (kept byte for byte), or None."""
        value = self.raw(name)
        return None if value is None else Secret(value)

    def path(self, name: str) -> Path | None:
        """The value as a path, or None."""
        value = self.optional(name)
        return None if value is None else Path(value)

    def choice(self, name: str, default: str, choices: tuple[str, ...], *, fold_case: bool = False) -> str:
        """One of `choices` (compared case-insensitively and returned lower-case when `fold_case`)."""
        value = self.text(name, default)
        if fold_case:
            value = value.lower()
        if value not in choices:
            self.problem(name, f"must be one of {', '.join(choices)} (got {value!r})")
            return default
        return value

    def boolean(self, name: str, default: bool) -> bool:
        """`true`/`false`/`1`/`0`/`yes`/`no`, case-insensitive."""
        value = self.optional(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        self.problem(name, f"must be a boolean: true, false, 1, 0, yes or no (got {value!r})")
        return default

    def integer(self, name: str, default: int, low: int | None = None, high: int | None = None) -> int:
        """An integer within `low..high` (either bound may be open)."""
        text = self.optional(name)
        if text is None:
            return default
        if not _INTEGER.fullmatch(text):
            self.problem(name, f"must be an integer (got {text!r})")
            return default
        value = int(text)
        if not self._within(name, value, low, high, str):
            return default
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        """A decimal number within `low..high`."""
        text = self.optional(name)
        if text is None:
            return default
        if not _NUMBER.fullmatch(text) or not math.isfinite(float(text)):
            self.problem(name, f"must be a decimal number (got {text!r})")
            return default
        value = float(text)
        return value if self._within(name, value, low, high, str) else default

    def duration(
        self,
        name: str,
        default: str,
        *,
        low: float | None = None,
        high: float | None = None,
        positive: bool = False,
        zero_ok: bool = False,
    ) -> float:
        """A duration (§2.2) in seconds within `low..high`; `positive`: > 0; `zero_ok`: 0 is allowed too."""
        text = self.optional(name)
        try:
            value = parse_duration(default if text is None else text)
        except ValueError as exc:
            self.problem(name, str(exc))
            return parse_duration(default)
        if positive and value <= 0:
            self.problem(name, f"must be greater than 0 (got {text})")
            return parse_duration(default)
        if zero_ok and value == 0:
            return value
        if not self._within(name, value, low, high, format_duration, zero_ok=zero_ok):
            return parse_duration(default)
        return value

    def read_file(self, name: str) -> bytes | None:
        """The content of the file the variable names, or None (unset, or unreadable: a problem)."""
        path = self.path(name)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            self.problem(name, f"cannot read {path}: {exc.strerror or exc}")
            return None

    def _within(
        self,
        name: str,
        value: float,
        low: float | None,
        high: float | None,
        show: Callable[[float], str],
        *,
        zero_ok: bool = False,
    ) -> bool:
        if (low is None or value >= low) and (high is None or value <= high):
            return True
        either = "0 or " if zero_ok else ""
        if low is None:
            bounds = f"must be at most {show(high if high is not None else value)}"
        elif high is None:
            bounds = f"must be {either}at least {show(low)}"
        else:
            bounds = f"must be {either}between {show(low)} and {show(high)}"
        self.problem(name, f"{bounds} (got {show(value)})")
        return False
