"""Logging set up once per process: human lines by default, one JSON object per line with ``--log-json``."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (as ``logging.lastResort`` does), not to the
    stream that was ``sys.stderr`` when logging was set up: code that swaps ``sys.stderr`` for a while (a test's
    output capture, a progress display) would otherwise leave the root logger writing to a closed stream."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]  # read-only: always the current sys.stderr
        return sys.stderr


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    handler = _StderrHandler()
    if json_lines:
        handler.setFormatter(_JsonFormatter())
    else:
        fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s[%(process)d] %(message)s", "%H:%M:%S")
        fmt.converter = time.localtime
        handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
