"""Opening cameras without OpenCV's global open lock: MJPEG over HTTP read in Python, RTSP probed first.
A real HTTP server on loopback (the standard library's) plays a multipart JPEG stream without Content-Length."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from common.embedded import free_port
from common.errors import SourceError
from producers.cameras.capture import MjpegHttpCapture, open_capture, rtsp_probe
from tests.helpers import mjpeg_camera

SHADES = (40, 120, 200)


@pytest.fixture
def http_camera() -> Iterator[int]:
    with mjpeg_camera(SHADES) as port:
        yield port


def test_mjpeg_without_content_length_and_with_basic_auth(http_camera: int) -> None:
    cap = MjpegHttpCapture(f"http://admin:s3cret@127.0.0.1:{http_camera}/video", 2.0, 2.0)
    shades = []
    for _ in SHADES:
        ok, img = cap.read()
        assert ok and img is not None and img.shape == (48, 64, 3)
        shades.append(int(img.mean().round()))
    assert shades == pytest.approx(list(SHADES), abs=2)
    assert cap.read() == (False, None)  # the stream ended
    cap.release()


def test_failed_opens_say_why(http_camera: int) -> None:
    with pytest.raises(SourceError, match=r"cannot open http://admin:\*\*\*@127.0.0.1:\d+/video: HTTP 401"):
        open_capture(f"http://admin:wrong@127.0.0.1:{http_camera}/video", None, 1.0, 1.0)
    with pytest.raises(SourceError, match="Connection refused"):
        open_capture(f"http://127.0.0.1:{free_port()}/cam.mjpg", None, 0.5, 0.5)


def test_rtsp_open_says_refused_or_timed_out() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(SourceError, match=rf"cannot open rtsp://127.0.0.1:{port}/cam: connection refused by "
                                          rf"127.0.0.1:{port}"):
        open_capture(f"rtsp://127.0.0.1:{port}/cam", None, 5.0, 5.0)
    assert time.monotonic() - started < 1.0  # refused at once, not after the open timeout
    with socket.socket() as silent:  # accepts (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"rtsp://127.0.0.1:{silent.getsockname()[1]}/cam"
        with pytest.raises(SourceError, match=r"accepted the connection but sent no RTSP answer within 0\.5 s"):
            open_capture(url, None, 0.5, 0.5)
    with pytest.raises(SourceError, match=r"cannot resolve no-such-camera\.invalid"):
        open_capture("rtsp://no-such-camera.invalid/cam", None, 0.5, 0.5)


def test_rtsp_probe() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                assert conn.recv(1024).startswith(b"OPTIONS rtsp://127.0.0.1:")  # no credentials sent
                conn.sendall(b"RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        assert rtsp_probe(f"rtsp://admin:pw@127.0.0.1:{port}/stream", 2.0) is None  # 401: alive, OpenCV may open
        thread.join(2)
        assert "no RTSP answer" in (rtsp_probe(f"rtsp://127.0.0.1:{port}/stream", 0.5) or "")  # never answers
    assert "connection refused" in (rtsp_probe(f"rtsp://127.0.0.1:{port}/stream", 0.5) or "")  # closed port


class _SilentCamera(BaseHTTPRequestHandler):
    """HTTP/1.0 (the handler's default, as many IP cameras answer): one frame, then silence until the client goes."""

    closed = threading.Event()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        ok, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))
        assert ok
        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg.tobytes())
                         + jpeg.tobytes() + b"\r\n")
        self.wfile.flush()
        self.connection.settimeout(10)
        try:
            if self.rfile.read(1) == b"":  # the client closed its end
                _SilentCamera.closed.set()
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


def test_an_http_1_0_camera_gets_the_read_timeout_and_its_socket_closed_on_release() -> None:
    """With HTTP/1.0 the response takes the socket over: the read timeout still applies to it (a silent camera
    does not wait out the longer open timeout), and release() closes the connection (a one-client camera would
    refuse the reconnect)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SilentCamera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cap = MjpegHttpCapture(f"http://127.0.0.1:{server.server_address[1]}/video", 4.0, 0.5)
        assert cap.read()[0]
        started = time.monotonic()
        assert cap.read() == (False, None)
        assert time.monotonic() - started < 2.0  # the 0.5 s read timeout, not the 4 s open timeout
        cap.release()
        assert _SilentCamera.closed.wait(5)
    finally:
        server.shutdown()
        server.server_close()
