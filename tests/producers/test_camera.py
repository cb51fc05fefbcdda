"""Pure unit tests of the camera's moving parts: the reconnect schedule and the one-frame mailbox."""

import random
import threading
import time

import numpy as np

from producers.cameras.camera import CameraReport, LatestFrame, backoff_delay
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


def test_a_video_file_as_a_camera_plays_at_its_frame_rate_and_loops_without_reconnecting(pipeline_env,
                                                                                           small_video) -> None:
    """A file is played at its own frame rate (unpaced, it would be decoded as fast as a core allows), and each
    end starts it again, neither a reconnect nor a lost connection."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "common.cli", "produce", "camera", str(small_video), "--source", "c",
                          "--fps", "5", "--duration", "4", "--json"], env=pipeline_env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    # 60 frames at 25 fps (2.4 s): 4 s play it past its end once; unpaced it would be thousands of frames
    assert 60 < report["captured"] < 150 and report["reconnects"] == 0 and report["last_error"] == ""
    assert "connection lost" not in out.stderr and report["produced"] >= 10


def test_a_state_the_broker_did_not_take_is_recorded_once_it_is_back(client, namespace) -> None:
    """A state change the broker did not take (a camera that went down during a broker outage) is kept and
    written by the next flush, although later calls with the same state return early: otherwise `vigil status`
    would say "online" for good. After the stop, a late state writes nothing."""
    import redis

    from common.bundle import InputSpec
    from common.streams import SourceKeys
    from producers.cameras.camera import Camera, LiveTiming
    from producers.cameras.config import build_camera
    from producers.cameras.publisher import LivePublisher

    publisher = LivePublisher(client, namespace, "cam", 8)
    camera = Camera(build_camera({"id": "cam", "url": "rtsp://10.0.0.5/s", "fps": 2}, "camera cam"),
                    InputSpec(height=28, width=28, channels=1, color="gray"), publisher, LiveTiming(),
                    threading.Event())
    camera.open()
    camera._set_state("online", "receiving 320x240 frames")
    real = publisher.set_state

    def outage(state: str, reason: str) -> None:
        raise redis.ConnectionError("broker unreachable")

    publisher.set_state = outage  # type: ignore[method-assign]
    camera._set_state("offline", "connection lost")  # the broker is down at that moment
    camera._set_state("offline", "connection lost")  # and the camera stays down: the same state again returns early
    publisher.set_state = real  # type: ignore[method-assign]
    camera.flush()  # the broker is back
    meta = client.hgetall(SourceKeys(namespace, "cam").meta)
    assert (meta[b"state"], meta[b"state_reason"]) == (b"offline", b"connection lost")
    camera.close("producer stopped")
    camera._set_state("online", "receiving 320x240 frames")  # a late reader after the stop writes nothing
    assert client.hget(SourceKeys(namespace, "cam").meta, "state") == b"offline"


def test_frames_sampled_during_a_broker_outage_are_counted_once_it_is_back(client, namespace) -> None:
    """Frames the sampler took while the broker was unreachable are counted as dropped_unpublished once it is
    back, so that captured balances."""
    import redis

    from common.bundle import InputSpec
    from common.streams import SourceKeys
    from producers.cameras.camera import Camera, LiveTiming
    from producers.cameras.config import build_camera
    from producers.cameras.publisher import LivePublisher

    publisher = LivePublisher(client, namespace, "cam", 8)
    camera = Camera(build_camera({"id": "cam", "url": "rtsp://10.0.0.5/s", "fps": 2}, "camera cam"),
                    InputSpec(height=28, width=28, channels=1, color="gray"), publisher, LiveTiming(),
                    threading.Event())
    camera.open()
    real, down = publisher.publish, [True]

    def publish(frame):  # the broker unreachable for the first three frames
        if down[0]:
            raise redis.ConnectionError("broker unreachable")
        return real(frame)

    publisher.publish = publish  # type: ignore[method-assign]
    img = np.zeros((48, 64, 3), np.uint8)
    for i in range(5):
        down[0] = i < 3
        camera._publish(img, time.time())
    camera.flush()
    meta = client.hgetall(SourceKeys(namespace, "cam").meta)
    assert (int(meta[b"dropped_unpublished"]), int(meta[b"produced"])) == (3, 2)
    assert camera.report().dropped_unpublished == 3
