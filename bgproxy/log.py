"""Structured logs: one JSON object (or key=value line) per event, to stderr.

Call `log(logger, "event_name", key=value, ...)`; the fields travel in the record and the formatter
renders them, so nothing is formatted for a level that is off.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = "bg_fields"


def log(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS: fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [ts, record.levelname.lower(), record.getMessage()]
        parts += [f"{k}={_text_value(v)}" for k, v in getattr(record, _FIELDS, {}).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    """A value as one token of a text log line: quoted (and escaped) when it has spaces or anything unprintable, so a
    reason with a newline cannot forge a log line of its own."""
    text = value if isinstance(value, str) else str(value)
    if text and text.isprintable() and " " not in text:
        return text
    return repr(text)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("bgproxy")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # aiohttp's access log is off; its errors still matter.
    logging.getLogger("aiohttp").handlers[:] = [handler]
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
