"""Logs (SPEC §12.1, §7.9): one line per record to stdout, JSON outside dev, secrets never written.

Fields whose name (split on `_`, `-`, `.`) has a segment like `password`, `token` or `secret`, or the compounds
`api_key`/`private_key`, are replaced by `[REDACTED]`; control characters in values are escaped so a value
cannot forge log lines.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from loguru import logger

from pandora_users.observability import tracing
from pandora_users.timestamps import rfc3339

SENSITIVE = frozenset({"password", "passwd", "secret", "token", "authorization", "cookie", "credential"})
COMPOUNDS = ("api_key", "private_key")
_SPLIT = re.compile(r"[_.\-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
REDACTED = "[REDACTED]"


def is_sensitive(name: str) -> bool:
    lowered = name.lower()
    if any(compound in lowered.replace("-", "_").replace(".", "_") for compound in COMPOUNDS):
        return True
    return any(segment in SENSITIVE for segment in _SPLIT.split(lowered))


def escape(value: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def redact(fields: dict[str, Any]) -> dict[str, Any]:
    """A copy with sensitive fields replaced and control characters escaped, recursively."""
    clean: dict[str, Any] = {}
    for key, value in fields.items():
        if is_sensitive(key):
            clean[key] = REDACTED
        elif isinstance(value, dict):
            clean[key] = redact(value)
        elif isinstance(value, str):
            clean[key] = escape(value)
        else:
            clean[key] = value
    return clean


class _ToLoguru(logging.Handler):
    """Routes the standard library's records (uvicorn, asyncio, libraries) into the one loguru sink."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.bind(logger=record.name).opt(exception=record.exc_info).log(level, record.getMessage())


def _json_sink(message: Any) -> None:
    record = message.record
    extra = dict(record["extra"])
    doc: dict[str, Any] = {
        "level": record["level"].name.lower(),
        "time": rfc3339(record["time"]),
        "message": escape(record["message"]),
        "service": extra.pop("service", "pandora-users"),
        "env": extra.pop("env", None),
        "logger": extra.pop("logger", record["name"]),
    }
    doc.update(redact(extra))
    if record["exception"] is not None:
        doc["exception"] = escape("".join(record["exception"].__repr__()))[:4000]
    sys.stdout.write(json.dumps(doc, default=str) + "\n")
    sys.stdout.flush()


def _console_format(record: Any) -> str:
    record["message"] = escape(record["message"])
    record["extra"] = redact(record["extra"])
    name = record["extra"].get("logger", record["name"])
    return f"<green>{{time:HH:mm:ss.SSS}}</green> <level>{{level: <7}}</level> {name}: {{message}}\n{{exception}}"


def _trace_ids(record: Any) -> None:
    """`trace_id` and `span_id` of the span current where the record was made (SPEC §12.1)."""
    ids = tracing.current_ids()
    if ids is not None:
        record["extra"].setdefault("trace_id", ids[0])
        record["extra"].setdefault("span_id", ids[1])


def configure(*, level: str, fmt: str, env: str) -> None:
    logger.remove()
    logger.configure(extra={"service": "pandora-users", "env": env}, patcher=_trace_ids)
    if fmt == "json":
        logger.add(_json_sink, level=level.upper(), backtrace=False, diagnose=False)
    else:
        logger.add(sys.stdout, level=level.upper(), backtrace=False, diagnose=False, format=_console_format)
    logging.basicConfig(handlers=[_ToLoguru()], level=level.upper(), force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
