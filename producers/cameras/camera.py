"""Live cameras -> preprocessed frames on their streams, always the freshest frame, never a backlog.

Per camera, two daemon threads meet at a one-frame mailbox (``LatestFrame``):
  reader:  open (``producers.cameras.capture``, with timeouts) -> read continuously -> overwrite the mailbox; on a
           failed open, a lost connection or a stall (no frame for ``stall_timeout_s``) release and reconnect after an
           exponential, fully jittered, capped backoff.
  sampler: every 1/fps take the mailbox's frame if it is new -> crop ROI -> preprocess to the bundle's input
           -> publish under the live cap (``LivePublisher``).
Reading continuously is what keeps frames fresh: OpenCV's FFmpeg backend buffers, and a reader that only read
at the sampling rate would fall further behind the camera every second. ``run_cameras`` supervises them all
from the main thread: it flushes counters, runs the stall watchdog and stops within ~1 s on SIGTERM, even
while a camera is stuck connecting (a reader inside an open holds nothing to release and is not waited for; its
thread is a daemon and is left behind).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np
import redis

from common.broker import ACL_HINT, refused
from common.bundle import InputSpec
from common.errors import BrokerError, SourceError
from common.metrics import metrics
from common.preprocess import preprocess
from common.schemas import Frame
from producers.cameras.capture import Capture, open_capture
from producers.cameras.config import CameraConfig
from producers.cameras.publisher import LivePublisher
from producers.roi import crop

log = logging.getLogger(__name__)
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
OPEN_TIMEOUT_MIN_S = 3.0  # RTSP needs ~1 s to DESCRIBE, SETUP and probe the stream on loopback
WATCHDOG_GRACE_S = 2.0  # beyond the read timeout: the reader is stuck inside the decoder
JOIN_BUDGET_S = 1.0  # for readers of live streams to release them (an RTSP TEARDOWN frees the camera's session)
THREAD_ROLES = ("reader", "sampler")
SAMPLER_POLL_S = 0.2  # how long the sampler waits for a new frame before checking for stop again


@dataclass(frozen=True)
class LiveTiming:
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0
    stall_timeout_s: float = 5.0

    @property
    def open_timeout_s(self) -> float:
        return max(OPEN_TIMEOUT_MIN_S, self.stall_timeout_s)


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_s, min_s * 2**attempt)], so cameras that fail together retry apart."""
    return rng.uniform(0.0, min(max_s, min_s * 2.0 ** min(attempt, 32)))


class LatestFrame:
    """A one-frame mailbox. ``put`` overwrites (counting a frame nobody took as superseded); ``take`` empties."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._img: np.ndarray | None = None
        self._captured_at = 0.0
        self.captured = 0
        self.superseded = 0
        self.last_put = time.monotonic()

    def put(self, img: np.ndarray, captured_at: float) -> bool:
        with self._lock:
            superseded = self._img is not None
            self._img, self._captured_at = img, captured_at
            self.captured += 1
            self.superseded += superseded
            self.last_put = time.monotonic()
            self._lock.notify()
        return superseded

    def take(self, timeout: float = 0.0) -> tuple[np.ndarray, float] | None:
        """The frame put since the last take, waiting up to ``timeout`` seconds for one."""
        with self._lock:
            if self._img is None and timeout > 0:
                self._lock.wait(timeout)
            if self._img is None:
                return None
            img, self._img = self._img, None
            return img, self._captured_at


@dataclass
class CameraReport:
    id: str
    url: str
    state: str
    captured: int
    produced: int
    dropped_superseded: int
    dropped_trimmed: int
    reconnects: int
    last_error: str  # why the camera last failed or was lost ("" if it never did)
    refused: bool = False  # the broker refused it a command (an ACL rule): every camera was stopped
    dropped_unpublished: int = 0  # taken by the sampler while the broker was unreachable


class Camera:
    def __init__(self, config: CameraConfig, spec: InputSpec, publisher: LivePublisher, timing: LiveTiming,
                 stop: threading.Event, rng: random.Random | None = None) -> None:
        self.config = config
        self.spec = spec
        self.publisher = publisher
        self.timing = timing
        self.stop = stop
        self.rng = rng or random.Random()
        self.mailbox = LatestFrame()
        self.produced = 0
        self.trimmed = 0
        self.reconnects = 0
        self.last_error = ""
        self.state = "connecting"
        self._opening = False
        self._state_lock = threading.Lock()
        self._offline_since = time.monotonic()
        self._unrecorded: tuple[str, str] | None = None  # a state the broker did not take: flush() retries it
        self._closed = False  # close() recorded the final state: a late reader must not write "online" after it
        self.unpublished = 0  # frames the sampler took while the broker was unreachable (flushed once it is back)
        self._flushed = {"captured": 0, "dropped_superseded": 0, "reconnects": 0, "dropped_unpublished": 0}
        self._next_seq = 0
        self._threads: list[threading.Thread] = []
        self._broker_ok = True
        self.fatal: BrokerError | None = None  # set when the broker refuses the camera for good: the process exits
        self._m = metrics()

    @property
    def name(self) -> str:
        return self.config.id

    def open(self) -> None:
        """Register the source as live (meta, group); raises before any thread runs if it cannot be."""
        cfg = self.config
        self._next_seq = self.publisher.open({
            "url": cfg.safe_url, "target_fps": cfg.fps, "max_age_ms": cfg.max_age_ms,
            "results_maxlen": cfg.results_maxlen, "maxlen": cfg.maxlen, "transport": cfg.transport,
            "roi": ",".join(map(str, cfg.roi or ())),
        })

    def start(self) -> None:
        self._set_state("connecting", f"opening {self.config.safe_url}")
        for role, target in zip(THREAD_ROLES, (self._read_forever, self._sample_forever), strict=True):
            thread = threading.Thread(target=target, name=f"{role}-{self.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, deadline: float) -> bool:
        """Wait for the threads until ``deadline``; True when they all ended. A reader inside an open holds no
        stream to release and may be blocked for the whole open timeout: it is not waited for."""
        reader, sampler = self._threads
        sampler.join(max(0.0, deadline - time.monotonic()))
        if not self._opening:
            reader.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # --- reader --------------------------------------------------------------------------------------
    def _read_forever(self) -> None:
        attempt = 0
        while not self.stop.is_set():
            if attempt or self.state == "offline":
                self.reconnects += 1
                self._m.reconnects.labels(self.name).inc()
            opened = self._open_capture()
            if isinstance(opened, str):
                reason = opened
            else:
                try:
                    frames, reason = self._read_until_lost(opened)
                except Exception as exc:  # a decoder or library error: this reader reconnects instead of dying
                    log.exception("camera %s: reading failed", self.name)
                    frames, reason = 0, f"read failed: {type(exc).__name__}: {exc}"
                finally:
                    opened.release()
                attempt = 0 if frames else attempt
            if self.stop.is_set():
                return
            self.last_error = reason
            delay = backoff_delay(attempt, self.timing.reconnect_min_s, self.timing.reconnect_max_s, self.rng)
            attempt += 1
            self._set_state("offline", reason)
            log.warning("camera %s: %s; reconnecting in %.1f s", self.name, reason, delay)
            self.stop.wait(delay)

    def _open_capture(self) -> Capture | str:
        """The opened camera, or why it cannot be opened now."""
        self._opening = True
        try:
            return open_capture(self.config.url, self.config.device, self.timing.open_timeout_s,
                                self.timing.stall_timeout_s)
        except SourceError as exc:
            return str(exc)
        except Exception as exc:  # not foreseen (check_camera_url refuses what is known to fail here): retried
            log.exception("camera %s: opening failed", self.name)
            return f"open failed: {type(exc).__name__}: {exc}"
        finally:
            self._opening = False

    def _read_until_lost(self, cap: Capture) -> tuple[int, str]:
        """Read until the stream fails, stalls or the process stops; returns (frames read, why it ended)."""
        frames = 0
        while not self.stop.is_set():
            started = time.monotonic()
            ok, img = cap.read()
            if not ok:
                waited = time.monotonic() - started
                if waited >= 0.9 * self.timing.stall_timeout_s:
                    return frames, f"stalled: no frame for {waited:.1f} s"
                return frames, "connection lost" if frames else "connected but no frame decoded"
            if img is None:
                continue
            if self.mailbox.put(img, time.time()):
                self._m.frames_dropped.labels(self.name, "superseded").inc()
            self._m.frames_captured.labels(self.name).inc()
            frames += 1
            if self.state != "online" and not self.stop.is_set():  # first frame, or frames again after the
                self._came_online(img.shape[1], img.shape[0])  # watchdog gave up on a read
        return frames, "producer stopping"

    def _came_online(self, width: int, height: int) -> None:
        was_offline = self.state == "offline"
        self._set_state("online", f"receiving {width}x{height} frames")
        if was_offline:
            log.info("camera %s: online again after %.1f s offline", self.name, time.monotonic() - self._offline_since)
        else:
            log.info("camera %s: connected to %s (%dx%d)", self.name, self.config.safe_url, width, height)

    # --- sampler -------------------------------------------------------------------------------------
    def _sample_forever(self) -> None:
        """At most ``fps`` frames a second, each published as soon as it is both allowed and new: a camera
        running at the target rate is not delayed by the phase between its clock and ours."""
        period = 1.0 / self.config.fps
        next_at = time.monotonic()
        while not self.stop.wait(max(0.0, next_at - time.monotonic())):
            item = self.mailbox.take(timeout=SAMPLER_POLL_S)
            if item is None:
                continue
            self._publish(*item)
            next_at = max(next_at + period, time.monotonic() - 0.5 * period)  # catch up a little, never burst

    def _publish(self, img: np.ndarray, captured_at: float) -> None:
        pixels = preprocess(crop(img, self.config.roi), self.spec)
        try:
            if not self._broker_ok:  # the publish that failed may have added its frame before its reply was lost
                seq = self.publisher.next_seq()
                added = max(0, seq - self._next_seq)  # (another producer of the source counts here too)
                self.produced += added
                self.unpublished -= min(added, self.unpublished)
                self._next_seq = seq
            frame = Frame.from_pixels(self.name, self._next_seq, pixels, captured_at, time.time(),
                                      self.config.transport, self.config.jpeg_quality)
            self._next_seq, trimmed = self.publisher.publish(frame)
        except redis.RedisError as exc:
            if refused(exc):  # a rule, not an outage: waiting for the broker to come back would drop every frame
                self.fatal = BrokerError(
                    f"camera {self.name}: the broker refuses a command the camera needs ({exc}). {ACL_HINT}")
                log.error("%s; stopping", self.fatal)
                self.stop.set()
                return
            if self._broker_ok:
                log.error("camera %s: cannot publish to the broker (%s); dropping frames until it is back",
                          self.name, exc)
            self._broker_ok = False
            self.unpublished += 1
            self._m.frames_dropped.labels(self.name, "unpublished").inc()
            return
        if not self._broker_ok:
            log.info("camera %s: broker reachable again", self.name)
            self._broker_ok = True
        self.produced += 1
        self.trimmed += trimmed
        self._m.frames_produced.labels(self.name).inc()
        if trimmed:
            self._m.frames_dropped.labels(self.name, "trimmed").inc(trimmed)

    # --- state, counters, watchdog -------------------------------------------------------------------
    def _set_state(self, state: str, reason: str, final: bool = False) -> None:
        with self._state_lock:
            if self._closed or (state == self.state and state != "connecting" and not final):
                return
            self._closed = final
            self.state = state
            if state == "offline":
                self._offline_since = time.monotonic()
            self._m.camera_online.labels(self.name).set(1 if state == "online" else 0)
            self._record_state(state, reason)

    def _record_state(self, state: str, reason: str) -> None:
        """Write the state to the broker; one it does not take is kept for ``flush`` to retry (else the meta hash
        would say "online" for good about a camera that went down during a broker outage)."""
        try:
            self.publisher.set_state(state, reason)
        except redis.RedisError as exc:
            if self._unrecorded is None:
                log.error("camera %s: state %s not recorded in the broker (%s); retrying", self.name, state, exc)
            self._unrecorded = (state, reason)
        else:
            self._unrecorded = None

    def watchdog(self) -> None:
        """Mark a camera offline whose reader is stuck past the read timeout (it reconnects when it returns)."""
        silent = time.monotonic() - self.mailbox.last_put
        if self.state == "online" and silent > self.timing.stall_timeout_s + WATCHDOG_GRACE_S:
            self._set_state("offline", f"stalled: no frame for {silent:.1f} s (reader blocked in the decoder)")
            log.warning("camera %s: no frame for %.1f s; reader blocked, marked offline", self.name, silent)

    def flush(self) -> None:
        """Add the counters' growth since the last flush to the meta hash, and record a state it did not take."""
        with self._state_lock:
            if self._unrecorded is not None:
                self._record_state(*self._unrecorded)
        now = {"captured": self.mailbox.captured, "dropped_superseded": self.mailbox.superseded,
               "reconnects": self.reconnects, "dropped_unpublished": self.unpublished}
        deltas = {k: v - self._flushed[k] for k, v in now.items()}
        try:
            self.publisher.count(deltas)
        except redis.RedisError as exc:
            log.warning("camera %s: counters not flushed (%s); retrying", self.name, exc)
            return
        self._flushed = now

    def report(self) -> CameraReport:
        return CameraReport(self.name, self.config.safe_url, self.state, self.mailbox.captured, self.produced,
                            self.mailbox.superseded, self.trimmed, self.reconnects,
                            str(self.fatal) if self.fatal else self.last_error, self.fatal is not None,
                            self.unpublished)

    def close(self, reason: str) -> None:
        self.flush()
        self._set_state("offline", reason, final=True)


def run_cameras(client: redis.Redis, namespace: str, cameras: list[CameraConfig], spec: InputSpec,
                timing: LiveTiming, stop: threading.Event, duration: float | None = None) -> list[CameraReport]:
    """Serve every camera until ``stop`` is set or ``duration`` seconds pass; returns one report per camera."""
    os.environ.setdefault(FFMPEG_OPTIONS_ENV, "rtsp_transport;tcp")  # read by OpenCV at every open
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # failed opens: our log says it once
    running = [Camera(cfg, spec, LivePublisher(client, namespace, cfg.id, cfg.maxlen), timing, stop)
               for cfg in cameras]
    for camera in running:
        camera.open()
    for camera in running:
        camera.start()
    log.info("serving %d camera(s): %s", len(running), ", ".join(c.name for c in running))
    deadline = time.monotonic() + duration if duration else None
    while not stop.wait(0.25):
        for camera in running:
            camera.watchdog()
            camera.flush()
        if deadline is not None and time.monotonic() >= deadline:
            break
    stop.set()
    join_deadline = time.monotonic() + JOIN_BUDGET_S
    for camera in running:
        if not camera.join(join_deadline):
            log.warning("camera %s: still blocked opening or reading the camera; leaving its daemon thread behind",
                        camera.name)
        camera.close("producer stopped")
    return [camera.report() for camera in running]


def refusal(reports: list[CameraReport]) -> BrokerError | None:
    """The error of a camera the broker refused a command (``run_cameras`` stopped every camera then)."""
    return next((BrokerError(r.last_error) for r in reports if r.refused), None)


def left_behind() -> list[str]:
    """Camera threads still alive after ``run_cameras`` returned: blocked in an open or a read (in C for OpenCV)."""
    return [t.name for t in threading.enumerate() if t.name.startswith(tuple(f"{r}-" for r in THREAD_ROLES))]

