"""Configuration durations (SPEC §2.2): `90s`, `15m`, `168h`, `1h30m`, `250ms`, or `0`.

A duration is one or more `<number><unit>` parts, units `h`, `m`, `s`, `ms`, each unit at most once and in
that order. Numbers are decimal (`1.5h` is allowed). Values are float seconds, computed exactly in decimal and
rounded once, so `parse_duration(format_duration(x)) == x` for any finite `x >= 0`.
"""

from __future__ import annotations

import math
import re
from decimal import Context, Decimal

_UNIT_SECONDS: dict[str, Decimal] = {
    "h": Decimal(3600),
    "m": Decimal(60),
    "s": Decimal(1),
    "ms": Decimal("0.001"),
}
_UNIT_ORDER = ("h", "m", "s", "ms")
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_MAX_LENGTH = 1024
# Enough digits to add up any accepted text exactly before the single rounding to float.
_EXACT = Context(prec=2 * _MAX_LENGTH + 50)


def parse_duration(text: str) -> float:
    """Return the duration `text` in seconds; raise `ValueError` if it is not a valid duration."""
    if not isinstance(text, str):
        raise ValueError(f"a duration must be a string, not {type(text).__name__}")
    if text == "0":
        return 0.0
    if not text or len(text) > _MAX_LENGTH:
        raise ValueError(f"invalid duration {text!r}: expected e.g. 90s, 15m, 1h30m, 250ms or 0")
    total = Decimal(0)
    position = 0
    last_unit = -1
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        unit = _UNIT_ORDER.index(match.group(2))
        if unit <= last_unit:
            raise ValueError(f"invalid duration {text!r}: each unit may appear once, in the order h, m, s, ms")
        total = _EXACT.add(total, _EXACT.multiply(Decimal(match.group(1)), _UNIT_SECONDS[match.group(2)]))
        last_unit = unit
        position = match.end()
    if position != len(text):
        raise ValueError(f"invalid duration {text!r}: expected numbers with units ms, s, m or h (e.g. 90s, 1h30m) or 0")
    seconds = float(total)
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {text!r}: too large")
    return seconds


def format_duration(seconds: float) -> str:
    """Return the canonical text of a duration in seconds, e.g. `5400.0` → `1h30m`, `0.25` → `250ms`."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"a duration must be a number of seconds, not {type(seconds).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be finite and not negative, got {seconds!r}")
    # repr() is the shortest text that reads back as the same float, so the result round-trips exactly.
    remaining = _EXACT.multiply(Decimal(repr(float(seconds))), Decimal(1000))
    parts: list[str] = []
    for unit, size in (("h", Decimal(3_600_000)), ("m", Decimal(60_000)), ("s", Decimal(1000))):
        whole = _EXACT.divide_int(remaining, size)
        if whole:
            parts.append(f"{whole}{unit}")
            remaining = _EXACT.subtract(remaining, _EXACT.multiply(whole, size))
    if remaining:
        parts.append(f"{_plain(remaining)}ms")
    return "".join(parts) or "0"


def _plain(value: Decimal) -> str:
    """Positional notation without exponent or trailing zeros (`0.5`, `250`)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
