"""Pure unit tests of the camera's moving parts: the reconnect schedule and the one-frame mailbox."""

import random
import threading
import time

import numpy as np

from producers.camera import CameraReport, LatestFrame, backoff_delay
from producers.cli import never_online


def test_backoff_is_exponential_jittered_and_capped() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (60, 10.0)]:
        delays = [backoff_delay(attempt, 0.5, 10.0, rng) for _ in range(400)]
        assert min(delays) >= 0.0 and max(delays) <= ceiling
        assert max(delays) > 0.9 * ceiling and min(delays) < 0.1 * ceiling  # full jitter spans the range


def test_mailbox_keeps_newest_and_counts_superseded() -> None:
    box = LatestFrame()
    assert box.take() is None
    for i in range(3):
        box.put(np.full((2, 2), i, np.uint8), float(i))
    img, ts = box.take() or (None, None)
    assert ts == 2.0 and img is not None and img[0, 0] == 2
    assert (box.captured, box.superseded, box.take()) == (3, 2, None)


def test_take_waits_for_the_next_frame() -> None:
    box = LatestFrame()
    timer = threading.Timer(0.05, box.put, (np.zeros((2, 2), np.uint8), 7.0))
    started = time.monotonic()
    timer.start()
    item = box.take(timeout=2.0)
    timer.join()
    assert item is not None and item[1] == 7.0
    assert time.monotonic() - started < 1.0  # woken by the put, not by the timeout
    assert box.take(timeout=0.05) is None


def report(camera_id: str, captured: int, last_error: str = "") -> CameraReport:
    return CameraReport(camera_id, f"rtsp://h/{camera_id}", "offline", captured, captured, 0, 0, 1, last_error)


def test_a_bounded_run_names_the_cameras_that_sent_no_frame() -> None:
    dropped = report("gate", 40, "connection lost")  # was online, then dropped: retried and counted, not an error
    dead = report("desk", 0, "cannot open rtsp://h/desk: connection refused by h:554")
    error = never_online([dropped, dead, report("yard", 0)], 3.0)
    assert error is not None and error.exit_code == 7
    assert str(error).startswith("no frame in 3 s from 2 of 3 camera(s): desk (cannot open rtsp://h/desk: "
                                 "connection refused by h:554); yard (still connecting).")
    assert never_online([dropped], 3.0) is None
    assert never_online([dead], None) is None  # an unbounded run keeps retrying
