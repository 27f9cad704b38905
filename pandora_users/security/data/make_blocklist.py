"""Regenerate `common-passwords.txt`, the bundled blocklist of common passwords (SPEC §7.1).

Not imported by the service: run it by hand with a Python that has the `zxcvbn` package installed, in a
throwaway virtualenv outside the repository, for example::

    uv venv /tmp/pwlist && uv pip install --python /tmp/pwlist/bin/python zxcvbn==4.5.0
    /tmp/pwlist/bin/python pandora_users/security/data/make_blocklist.py

Source: the `passwords` frequency list shipped in zxcvbn (MIT licence, (c) Dropbox and Daniel Wolf), itself
taken from Mark Burnett's public-domain "10 million passwords" data set, most common first. Each entry is
normalised the way the service folds a password (NFKC, case fold, NFKC); entries outside the default
length policy (8..128 code points, at most 512 UTF-8 bytes) or holding U+0000 are dropped, and duplicates
after folding are removed, keeping the frequency order. See README.md beside this file.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from collections.abc import Iterable
from pathlib import Path

MIN_LENGTH = 8
MAX_LENGTH = 128
MAX_BYTES = 512
MIN_ENTRIES = 10_000
DEFAULT_OUT = Path(__file__).with_name("common-passwords.txt")


def fold(value: str) -> str:
    """The comparison form of a password: the same function as `passwords._fold`."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())


def qualifying(candidates: Iterable[str]) -> list[str]:
    """Fold, filter to the default length policy and de-duplicate, keeping the first occurrence."""
    seen: set[str] = set()
    out: list[str] = []
    for raw in candidates:
        entry = fold(raw)
        if not MIN_LENGTH <= len(entry) <= MAX_LENGTH or len(entry.encode("utf-8")) > MAX_BYTES:
            continue
        if "\x00" in entry or "\n" in entry or "\r" in entry or entry in seen:
            continue
        seen.add(entry)
        out.append(entry)
    return out


def zxcvbn_passwords() -> list[str]:
    """The zxcvbn `passwords` frequency list, most common first."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    value = FREQUENCY_LISTS["passwords"]
    return value.split(",") if isinstance(value, str) else list(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="file to write")
    args = parser.parse_args(argv)
    entries = qualifying(zxcvbn_passwords())
    if len(entries) < MIN_ENTRIES:
        print(f"only {len(entries)} qualifying entries (< {MIN_ENTRIES}); add a source", file=sys.stderr)
        return 1
    args.out.write_text("".join(f"{entry}\n" for entry in entries), encoding="utf-8")
    print(f"wrote {len(entries)} entries to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
