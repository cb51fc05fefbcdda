"""Simulated cameras on loopback: a video file played in real time, in a loop, by a real streaming server.

``MjpegServer``: ffmpeg serving HTTP multipart JPEG (``http://127.0.0.1:PORT/cam.mjpg``). ``ffmpeg -listen 1``
serves one client and exits when it disconnects, so a supervisor thread restarts it: a camera that reconnects
finds the server again, as with a real IP camera.
``RtspServer``: GStreamer's RTSP server (``rtsp://127.0.0.1:PORT/cam``, RTP/JPEG) run by the system python
(``vigil_bench/rtsp_gst.py``); needs Debian gstreamer1.0-rtsp, gir1.2-gst-rtsp-server-1.0, python3-gi,
gstreamer1.0-plugins-base and -good (scripts/bootstrap.sh installs them).

Both are context managers: ``start()`` returns once the server really answers, ``stop()`` kills its process
group (the way a camera dies: no goodbye). Used by the tests and by benches that need live cameras.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import cv2

from common.errors import SourceError

SYSTEM_PYTHON = "/usr/bin/python3"
GST_SCRIPT = Path(__file__).resolve().parent / "rtsp_gst.py"


class _Server(ABC):
    url: str
    _proc: subprocess.Popen[bytes] | None

    def __init__(self, port: int) -> None:
        self.port = port
        self._proc = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @abstractmethod
    def start(self, timeout: float = 15.0) -> Any:
        """Start serving; return once the server really answers."""

    @abstractmethod
    def stop(self) -> None:
        """Kill the server's process group (the way a camera dies: no goodbye)."""

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but no frame arrives, a stalled camera."""
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGCONT)


class MjpegServer(_Server):
    """``ffmpeg -re -stream_loop -1 -i VIDEO -r FPS -f mpjpeg -listen 1 http://127.0.0.1:PORT/cam.mjpg``."""

    def __init__(self, video: Path | str, port: int, fps: float = 25.0) -> None:
        super().__init__(port)
        self.video = Path(video)
        self.fps = fps
        self.url = f"http://127.0.0.1:{port}/cam.mjpg"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def command(self) -> list[str]:
        return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1",
                "-i", str(self.video), "-an", "-r", f"{self.fps:g}", "-pix_fmt", "yuvj420p", "-q:v", "5",
                "-f", "mpjpeg", "-content_type", "multipart/x-mixed-replace;boundary=ffmpeg", "-listen", "1", self.url]

    def start(self, timeout: float = 15.0) -> MjpegServer:
        if not self.video.is_file():
            raise SourceError(f"video {self.video} does not exist.")
        if shutil.which("ffmpeg") is None:
            raise SourceError("ffmpeg is not installed (Debian: apt-get install ffmpeg; or scripts/bootstrap.sh).")
        self._stop.clear()
        self._thread = threading.Thread(target=self._supervise, name=f"mjpeg-{self.port}", daemon=True)
        self._thread.start()
        # Probing with a GET would use up the one client ffmpeg serves; a listening socket is the sign.
        wait_listening(self.port, timeout, lambda: self._thread is not None and self._thread.is_alive())
        return self

    def _supervise(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                self._proc = _spawn(self.command())
            self._proc.wait()
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            _kill_group(self._proc)
        if self._thread is not None:
            self._thread.join(5)
        wait_closed(self.port)


class RtspServer(_Server):
    """GStreamer RTSP server playing the video's frames as RTP/JPEG at ``fps``, in a loop."""

    def __init__(self, video: Path | str, port: int, fps: float = 25.0, max_frames: int = 250) -> None:
        super().__init__(port)
        self.video = Path(video)
        self.fps = fps
        self.max_frames = max_frames
        self.url = f"rtsp://127.0.0.1:{port}/cam"
        self._frames_dir: Path | None = None
        self._size = (0, 0)

    def start(self, timeout: float = 15.0) -> RtspServer:
        if not Path(SYSTEM_PYTHON).is_file():
            raise SourceError(f"{SYSTEM_PYTHON} is missing; the RTSP server runs with the system python (python3-gi).")
        if self._frames_dir is None:
            self._frames_dir = Path(tempfile.mkdtemp(prefix="vigil-rtsp-"))
            self._size = extract_jpegs(self.video, self._frames_dir, self.max_frames)
        width, height = self._size
        log_path = self._frames_dir / "server.log"
        self._proc = _spawn([SYSTEM_PYTHON, str(GST_SCRIPT), str(self._frames_dir), str(width), str(height),
                             str(self.port), f"{self.fps:g}"], log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = log_path.read_text(errors="replace")[-800:]
                raise SourceError(f"RTSP server exited with code {self._proc.returncode}: {err} "
                                  "(Debian packages: gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi "
                                  "gstreamer1.0-plugins-good; scripts/bootstrap.sh installs them)")
            if rtsp_describe_ok(self.url):
                return self
            time.sleep(0.05)
        self.stop()
        raise SourceError(f"RTSP server on port {self.port} did not answer within {timeout}s")

    def stop(self) -> None:
        _kill_group(self._proc)
        self._proc = None
        wait_closed(self.port)

    def close(self) -> None:
        """Stop and delete the extracted frames (``stop()`` keeps them so that ``start()`` is quick)."""
        self.stop()
        if self._frames_dir is not None:
            shutil.rmtree(self._frames_dir, ignore_errors=True)
            self._frames_dir = None

    def __exit__(self, *exc: object) -> None:
        self.close()


def extract_jpegs(video: Path, out: Path, max_frames: int) -> tuple[int, int]:
    """Write up to ``max_frames`` frames as JPEG files, sized to multiples of 8 (RTP/JPEG needs that)."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise SourceError(f"{video} cannot be opened as a video.")
    size = (0, 0)
    try:
        for index in range(max_frames):
            ok, img = cap.read()
            if not ok:
                break
            h, w = img.shape[:2]
            size = (max(8, w // 8 * 8), max(8, h // 8 * 8))
            if size != (w, h):
                img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(out / f"{index:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    finally:
        cap.release()
    if size == (0, 0):
        raise SourceError(f"{video} has no frames.")
    return size


def rtsp_describe_ok(url: str, timeout: float = 1.0) -> bool:
    """True when an RTSP DESCRIBE of ``url`` gets ``200 OK`` (the media can be prepared)."""
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    request = f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n".encode()
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(request)
            return sock.recv(64).startswith(b"RTSP/1.0 200")
    except OSError:
        return False


LISTEN, ESTABLISHED = "0A", "01"  # socket states in /proc/net/tcp


def port_listening(port: int, states: tuple[str, ...] = (LISTEN,)) -> bool:
    """Whether a TCP socket on 127.0.0.1:port is in one of ``states``, read from /proc/net/tcp (no connection)."""
    needle = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(fields[1] == needle and fields[3] in states for fields in (line.split() for line in lines))


def wait_listening(port: int, timeout: float, alive: Any = lambda: True) -> None:
    """Until the server listens, or already serves a client: ``ffmpeg -listen 1`` closes its listening socket
    once a client connects, and a reconnecting camera may get in between two checks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        if port_listening(port, (LISTEN, ESTABLISHED)):
            return
        time.sleep(0.02)
    raise SourceError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wait_closed(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while port_listening(port) and time.monotonic() < deadline:
        time.sleep(0.02)


def _spawn(cmd: list[str], log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group (so that stopping it kills its children too)."""
    if log_path is None:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


def _kill_group(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
