"""The one exception that ends a process with a chosen exit code (SPEC §10.4, §11)."""

from __future__ import annotations


class Fatal(Exception):
    """Ends the process with `exit_code` after printing `message` (already in SPEC's format)."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message
