"""Log lines as JSON for ``zmqbus ... --log-format json``: one object per line,
with ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and, when the
record carries one, ``exc_info`` (the traceback text)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TextIO

__all__ = ["TEXT_FORMAT", "JsonFormatter", "handler"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in it are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, str] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # ASCII only: whatever the stream's encoding, the line stays valid JSON.
        return json.dumps(entry, ensure_ascii=True)


def handler(stream: TextIO, log_format: str) -> logging.Handler:
    """A handler writing to ``stream`` in ``log_format``: "text" or "json"."""
    out = logging.StreamHandler(stream)
    out.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return out
