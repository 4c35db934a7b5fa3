"""Logging set-up: human-readable text, or JSON lines for a log pipeline.

`log.format = "json"` (or `--log-format json`) writes one JSON object a line on standard error,
through the standard library's logging: `time`, `level`, `logger`, `message`, `process` (the
child's name under `--processes N`), `pid`, the exception's traceback if any, and the action id
(`action_id`) of the action being handled. The action id is a context variable set where an
action enters a process (the HTTP perform route, the WebSocket `perform`, the worker's router)
and where its outcome is broadcast, so every line logged about it on its way carries it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from scoreboard import json_codec

current_action_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_action_id", default=None
)


@contextlib.contextmanager
def action_context(action_id: object) -> Iterator[None]:
    """Within the block, log records carry `action_id` (a trio task inherits it on start)."""
    token = current_action_id.set(str(action_id))
    try:
        yield
    finally:
        current_action_id.reset(token)


class ActionIdFilter(logging.Filter):
    """Puts the current action id on each record (`record.action_id`), unless the call gave one
    explicitly (`extra={"action_id": ...}`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "action_id", None) is None:
            record.action_id = current_action_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str | None) -> None:
        super().__init__()
        self._process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": os.getpid(),
        }
        if self._process_name:
            line["process"] = self._process_name
        action_id = getattr(record, "action_id", None)
        if action_id is not None:
            line["action_id"] = action_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json_codec.dumps(line).decode()


def _rfc3339(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure(level: str, process_name: str | None = None, log_format: str = "text") -> None:
    """Log to standard error at `level`, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ActionIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter(process_name))
    else:
        prefix = f"[{process_name}] " if process_name else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
        )
    logging.basicConfig(level=level.upper(), handlers=[handler])
