"""A tiny RTSP camera on loopback: JPEG files played in a loop at a fixed rate, as RTP/JPEG (RFC 2435).

Run by ``vigil_bench.simcam.RtspServer`` with the *system* python, which has GStreamer's introspection
bindings (Debian python3-gi, gir1.2-gst-rtsp-server-1.0); the project's virtualenv cannot import ``gi``.
JPEG over RTP needs only gstreamer1.0-plugins-good (rtpjpegpay) and -base (appsrc): no H.264 encoder.

Usage: /usr/bin/python3 rtsp_gst.py FRAME_DIR WIDTH HEIGHT PORT FPS [PATH]  (WIDTH, HEIGHT: multiples of 8)
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main(frame_dir: str, width: int, height: int, port: int, fps: float, path: str = "/cam") -> None:
    frames = [p.read_bytes() for p in sorted(Path(frame_dir).glob("*.jpg"))]
    if not frames:
        sys.exit(f"no .jpg files in {frame_dir}")
    Gst.init(None)
    rate = Fraction(fps).limit_denominator(1000)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( appsrc name=src is-live=true do-timestamp=true format=time "
        f"caps=image/jpeg,width={width},height={height},framerate={rate.numerator}/{rate.denominator} "
        "! rtpjpegpay name=pay0 pt=26 )"
    )
    factory.set_shared(True)
    factory.connect("media-configure", lambda _f, media: _play(media, frames, fps))
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    print(f"serving rtsp://127.0.0.1:{port}{path}", flush=True)
    GLib.MainLoop().run()


def _play(media: GstRtspServer.RTSPMedia, frames: list[bytes], fps: float) -> None:
    """Push one frame every 1/fps seconds while the media exists (a live camera does not wait for readers)."""
    src = media.get_element().get_by_name("src")
    state = {"i": 0, "on": True}

    def push() -> bool:
        if not state["on"]:
            return False
        data = frames[state["i"] % len(frames)]
        state["i"] += 1
        src.emit("push-buffer", Gst.Buffer.new_wrapped(data))
        return True

    def stop(*_: object) -> None:
        state["on"] = False

    media.connect("unprepared", stop)
    GLib.timeout_add(max(1, round(1000 / fps)), push)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), *sys.argv[6:7])
