"""How commands stop on SIGINT/SIGTERM: as on Ctrl-C (KeyboardInterrupt), or by a flag the work checks."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside: SIGTERM raises KeyboardInterrupt in the main thread, so the command stops as on Ctrl-C (its
    clean-up runs, the CLI exits 130) instead of dying at once. Only for commands with no threads of their own
    inside OpenCV or FFmpeg: an exception at an arbitrary point while those run can abort the interpreter at
    exit (producers handle their signals themselves). Outside the main thread it does nothing."""
    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


log = logging.getLogger(__name__)


@contextmanager
def stop_on_signals(stop: threading.Event, what: str) -> Iterator[None]:
    """First SIGINT/SIGTERM: log ``what`` and set ``stop``, for a clean stop the work checks for. Second: exit now
    (128 + the signal). A flag, not KeyboardInterrupt: decoder threads may be inside OpenCV. Outside the main
    thread it does nothing."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        log.warning("%s: %s (send it again to exit at once)", signal.Signals(signum).name, what)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
