"""Open a camera without letting a dead one stall the others.

OpenCV's FFmpeg backend holds one process-wide mutex for the whole of ``VideoCapture.open`` (measured with
OpenCV 5.0: a healthy camera's open waited 2.7 s for a dead one's 3 s open timeout). One unreachable camera
would delay every other camera's (re)connect. So:
  - HTTP multipart MJPEG is read here, in Python (``MjpegHttpCapture``): socket timeouts, no shared lock,
    JPEG decoding by ``cv2.imdecode``. Other HTTP content (HLS, MP4) falls back to OpenCV.
  - RTSP is probed with an ``OPTIONS`` request first; OpenCV opens only a server that answers. The probe also
    tells a refused connection from one that timed out, which OpenCV's open does not.
  - USB devices go through V4L2, which does not take the FFmpeg mutex.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import time
import urllib.parse
from typing import Protocol

import cv2
import numpy as np

from common.errors import SourceError
from producers.cameras.config import redact_password


class Capture(Protocol):
    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


def open_capture(url: str, device: int | None, open_timeout_s: float, read_timeout_s: float) -> Capture:
    """A readable capture; ``SourceError`` saying why when the camera cannot be opened now."""
    if device is not None:
        return _opencv(cv2.VideoCapture(device, cv2.CAP_V4L2), f"/dev/video{device}")
    safe = redact_password(url)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        try:
            return MjpegHttpCapture(url, open_timeout_s, read_timeout_s)
        except NotMjpeg:
            pass  # e.g. HLS or MP4 over HTTP: FFmpeg reads those
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise SourceError(f"cannot open {safe}: {exc or type(exc).__name__}") from exc
    if "://" not in url:  # a video file (check_camera_url let only an existing one through)
        return FileCapture(url)
    hint = ""
    if scheme in ("rtsp", "rtsps"):
        if problem := rtsp_probe(url, open_timeout_s):
            raise SourceError(f"cannot open {safe}: {problem}")
        hint = (": the RTSP server answers, but FFmpeg opened no stream (wrong path or credentials, an unsupported "
                f"codec, or no stream within {open_timeout_s:.1f} s)")
    timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]
    return _opencv(cv2.VideoCapture(url, cv2.CAP_FFMPEG, timeouts), safe, hint)


def _opencv(cap: cv2.VideoCapture, name: str, hint: str = "") -> cv2.VideoCapture:
    if cap.isOpened():
        return cap
    cap.release()
    raise SourceError(f"cannot open {name} (OpenCV){hint}")


def rtsp_probe(url: str, timeout: float) -> str | None:
    """None when the RTSP server answers an ``OPTIONS`` request (any status: 401 still means it is alive),
    otherwise what happened: refused, no connection or no answer in time, an unknown host. For ``rtsps://``
    (TLS) only the TCP connection is checked."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return "no host in the URL"
    tls = parts.scheme.lower() == "rtsps"
    address = (parts.hostname, parts.port or (322 if tls else 554))
    where = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
    target = urllib.parse.urlunsplit((parts.scheme, _netloc_without_credentials(parts), parts.path, "", ""))
    request = f"OPTIONS {target} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: vigil\r\n\r\n".encode()
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except socket.gaierror as exc:
        return f"cannot resolve {parts.hostname} ({exc.strerror})"
    except ConnectionRefusedError:
        return f"connection refused by {where} (no RTSP server on that port?)"
    except TimeoutError:
        return f"no TCP connection to {where} within {timeout:.1f} s"
    except OSError as exc:
        return f"no TCP connection to {where}: {exc.strerror or exc}"
    with sock:
        if tls:
            return None
        try:
            sock.sendall(request)
            answer = sock.recv(16)
        except TimeoutError:
            return f"{where} accepted the connection but sent no RTSP answer within {timeout:.1f} s"
        except OSError as exc:
            return f"{where} dropped the connection: {exc.strerror or exc}"
    if not answer:
        return f"{where} closed the connection without an RTSP answer"
    return None if answer.startswith(b"RTSP/") else f"{where} answered, but not as an RTSP server"


class FileCapture:
    """A video file read as a camera would deliver it (tests, demos): at its own frame rate, and from the start
    again after its end, without a reconnect. Read unpaced, a file would be decoded as fast as a core allows
    (most frames superseded before sampling), and each end would count as a lost connection."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._cap = self._open()
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self._period = 1.0 / fps if fps and 0 < fps <= 1000 else 1.0 / 25
        self._next_at = time.monotonic()

    def _open(self) -> cv2.VideoCapture:
        return _opencv(cv2.VideoCapture(self._path, cv2.CAP_FFMPEG), self._path)

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(max(0.0, self._next_at - time.monotonic()))
        self._next_at = max(self._next_at + self._period, time.monotonic() - self._period)  # late: no burst
        ok, img = self._cap.read()
        if not ok:  # the end: play it again from the start
            self._cap.release()
            self._cap = self._open()
            ok, img = self._cap.read()
        return ok, img if ok else None

    def release(self) -> None:
        self._cap.release()


class NotMjpeg(Exception):
    """The HTTP URL serves something else than multipart JPEG; let OpenCV/FFmpeg read it."""


class MjpegHttpCapture:
    """An HTTP ``multipart/x-mixed-replace`` JPEG stream (IP cameras, ``ffmpeg -f mpjpeg``)."""

    def __init__(self, url: str, open_timeout_s: float, read_timeout_s: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self._conn: http.client.HTTPConnection
        if parts.scheme.lower() == "https":
            # Cameras mostly carry self-signed certificates; like FFmpeg (tls_verify=0) we do not verify them.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            self._conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=open_timeout_s,
                                                     context=context)
        else:
            self._conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=open_timeout_s)
        headers = {"User-Agent": "vigil"}
        if parts.username:
            token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        try:
            self._conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                               headers=headers)
            # Kept before getresponse(): for an HTTP/1.0 or "Connection: close" answer (many IP cameras) the
            # response takes the socket over and the connection's ``sock`` becomes None.
            sock = self._conn.sock
            self._resp = self._conn.getresponse()
            self._boundary, self._after_boundary = self._find_boundary()
        except BaseException:
            self._conn.close()
            raise
        if sock is not None:
            sock.settimeout(read_timeout_s)  # a silent camera is a stalled one

    def _find_boundary(self) -> tuple[bytes, bool]:
        """The part boundary from Content-Type, or sniffed from the first line (ffmpeg's server sends none)."""
        ctype = self._resp.headers.get_content_type()
        if self._resp.status != 200:
            raise ValueError(f"HTTP {self._resp.status} {self._resp.reason}")
        boundary = self._resp.headers.get_param("boundary")
        if ctype.startswith("multipart/") and isinstance(boundary, str):
            return b"--" + boundary.removeprefix("--").encode(), False
        if ctype == "application/octet-stream":
            first = self._resp.readline(256)
            if first.startswith(b"--") and len(first.strip()) > 2:
                return first.strip(), True
        raise NotMjpeg(ctype)

    def read(self) -> tuple[bool, np.ndarray | None]:
        try:
            data = self._next_part()
        except (OSError, ValueError, http.client.HTTPException):
            return False, None
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        return img is not None, img

    def _next_part(self) -> bytes:
        if not self._after_boundary:
            line = b""
            while not line.startswith(self._boundary):
                line = self._readline()
        self._after_boundary = False
        length = None
        while line := self._readline().strip():
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is not None:
            return self._resp.read(length)
        chunks = []  # no Content-Length: the part ends at the next boundary line
        while not (line := self._readline()).startswith(self._boundary):
            chunks.append(line)
        self._after_boundary = True
        return b"".join(chunks).removesuffix(b"\r\n")

    def _readline(self) -> bytes:
        line = self._resp.readline(1 << 20)
        if not line:
            raise ValueError("stream ended")
        return line

    def release(self) -> None:
        self._resp.close()  # closes the socket when the response holds it (HTTP/1.0, Connection: close)
        self._conn.close()


def _netloc_without_credentials(parts: urllib.parse.SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host
