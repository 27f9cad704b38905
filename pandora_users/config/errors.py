"""Configuration errors: every problem found at start-up, reported together (SPEC §10.4)."""

from __future__ import annotations

from collections.abc import Iterable

EXIT_INVALID_CONFIG = 3
EXIT_VAULT_UNAVAILABLE = 4


class ConfigError(Exception):
    """Configuration problems as `(VARIABLE, problem)` pairs, and the process exit code they call for."""

    def __init__(self, problems: Iterable[tuple[str, str]], exit_code: int = EXIT_INVALID_CONFIG) -> None:
        self.problems: list[tuple[str, str]] = list(problems)
        self.exit_code = exit_code
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return "\n".join(f"configuration error: {name}: {problem}" for name, problem in self.problems)

    def __repr__(self) -> str:
        return f"ConfigError(problems={self.problems!r}, exit_code={self.exit_code})"
