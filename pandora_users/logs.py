"""Log set-up: one line per record to stdout, JSON outside dev (SPEC §12.1)."""

from __future__ import annotations

import logging
import sys

from loguru import logger


class _ToLoguru(logging.Handler):
    """Routes the standard library's records (uvicorn, asyncio, libraries) into the one loguru sink."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info).log(level, record.getMessage())


def configure(*, level: str, fmt: str, env: str) -> None:
    logger.remove()
    logger.configure(extra={"service": "pandora-users", "env": env})
    if fmt == "json":
        logger.add(sys.stdout, level=level.upper(), serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(
            sys.stdout,
            level=level.upper(),
            backtrace=False,
            diagnose=False,
            format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> {name}: {message}",
        )
    logging.basicConfig(handlers=[_ToLoguru()], level=level.upper(), force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
