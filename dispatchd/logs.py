"""Log setup: one line per event with stable key=value fields, or JSON objects.

Every log call in dispatchd writes its message as `event=name key=value ...`;
the JSON format parses those pairs into fields, so both formats carry the same
data. Callback URLs and tokens are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

# key=value, where value is a bare word or a Python-repr'd string ('...' or "...").
_PAIR = re.compile(r"""(\w+)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+)""")
TEXT_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def fields(message: str) -> dict[str, Any]:
    """The key=value pairs of a log message (quotes removed); free text goes under `msg`."""
    out: dict[str, Any] = {}
    for key, value in _PAIR.findall(message):
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    if not out:
        out["msg"] = message
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger and the message's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        data.update(fields(record.getMessage()))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup(level: str, fmt: str = "text") -> None:
    """Configure the root logger to write to stderr (journald picks it up under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
