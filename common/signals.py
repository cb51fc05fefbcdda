"""SIGTERM as Ctrl-C, for commands that run until stopped and clean up on KeyboardInterrupt."""

from __future__ import annotations

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
