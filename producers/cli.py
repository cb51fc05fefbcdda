"""``vigil produce``: push frames into Redis streams."""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from common.broker import connect
from common.bundle import Bundle
from common.embedded import broker_url
from common.errors import ConfigError, SourceError
from common.metrics import serve
from common.settings import Settings
from common.signals import stop_on_signals
from producers.cameras.camera import CameraReport, LiveTiming, left_behind, refusal, run_cameras
from producers.cameras.config import CameraConfig, build_camera, load_cameras_file
from producers.files.producer import FileJob, check_roi, produce_file
from producers.files.sources import Sampling, check_readable, default_source_name
from producers.roi import Roi, parse_roi

log = logging.getLogger(__name__)


@click.group("produce")
def produce() -> None:
    """Push frames from files or live cameras into Redis streams (one stream per source)."""


def _roi_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Roi | None:
    """``--roi X,Y,W,H`` as a tuple; a malformed one is a usage error (exit 2) that names the option."""
    try:
        return None if value is None else parse_roi(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@produce.command("file")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--source", default=None,
              help="Source name (default: the file name without its extension). Only with one PATH.")
@click.option("--every", type=click.IntRange(1), default=None,
              help="Keep every Nth frame [default: 1]. Not with --fps.")
@click.option("--fps", type=click.FloatRange(0, min_open=True), default=None,
              help="Sample to this media rate. Not with --every.")
@click.option("--roi", default=None, metavar="X,Y,W,H", callback=_roi_option,
              help="Crop each frame to this region (pixels) before preprocessing; it must lie inside the frame. "
                   "Part of the source's identity: a resume needs the same region.")
@click.option("--transport", type=click.Choice(["raw", "jpeg"]), default="raw", show_default=True)
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True)
@click.option("--realtime", is_flag=True, help="Pace frames at media speed (simulate a camera).")
@click.option("--decoders", type=click.IntRange(0, 64), default=None,
              help="Decode a video with this many single-threaded decoders, each on a run of GOPs (needs ffprobe; "
                   "each run re-decodes ~20 frames when seeking). 0 = auto: cores + 1, at most 4 (1 on one core). "
                   "1: one FFmpeg-threaded decoder [settings.decoders: 0].")
@click.option("--pack", type=click.IntRange(1, 1024), default=None,
              help="Frames per stream entry (results stay one per frame); fewer entries cost the broker and the "
                   "workers less per frame. --realtime sends one frame per entry [settings.pack_frames: 16].")
@click.option("--restart", is_flag=True, help="Delete the source's streams and start from frame 0.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a TTY).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report per source.")
@click.pass_obj
def produce_file_cmd(settings: Settings, paths: tuple[Path, ...], source: str | None, every: int | None,
                     fps: float | None, roi: Roi | None, transport: str, jpeg_quality: int, realtime: bool,
                     decoders: int | None, pack: int | None, restart: bool, progress: bool | None,
                     as_json: bool) -> None:
    """Send the frames of video files or image folders, lossless and resumable, then exit.

    A crashed or killed run continues where it stopped when started again with the same arguments.

    \b
    Examples:
      vigil produce file clip.mp4 --fps 5                  # source "clip", 5 frames per media second
      vigil produce file a.mp4 b.mp4 --every 10 --json     # sources "a" and "b", every 10th frame
      vigil produce file shots/ --source shots --restart   # an image folder, from frame 0 again
      vigil produce file gate.mp4 --roi 100,50,640,480     # only that region of each frame
    """
    if source and len(paths) > 1:
        raise ConfigError("--source names one source; pass one PATH with it, or omit it.")
    if every is not None and fps is not None:
        raise click.UsageError("--every and --fps are mutually exclusive: --every N keeps every Nth frame, --fps R "
                               "samples to R frames per second of media time; pass one of them.")
    names = [source or default_source_name(path) for path in paths]
    for name in set(names):
        if names.count(name) > 1:
            same = [str(path) for path, other in zip(paths, names, strict=True) if other == name]
            raise ConfigError(f"{' and '.join(same)} would all be source {name!r} (named after the file): produce "
                              "them in separate runs, each with its own --source NAME.")
    for path in paths:  # before anything is registered: a bad path must not leave a source that never ends
        check_readable(path)
        if roi is not None:
            check_roi(path, roi)
    spec = Bundle.load(settings.bundle, verify_hashes=False).spec.input
    show = sys.stderr.isatty() if progress is None else progress
    stop = threading.Event()
    with broker_url(settings.redis_url) as url, stop_on_signals(stop, "stopping after the frames decoded so far"):
        client = connect(url)
        for path, name in zip(paths, names, strict=True):
            job = FileJob(path, name, spec, Sampling(every or 1, fps),
                          "jpeg" if transport == "jpeg" else "raw", jpeg_quality, restart, realtime,
                          settings.decoders if decoders is None else decoders, pack or settings.pack_frames, roi)
            try:
                report = produce_file(client, settings.namespace, job, settings.high_water, show, stop,
                                      settings.broker_patience_s)
            except SourceError as exc:
                if as_json:  # a record for the path that failed too, then the error (exit 7)
                    click.echo(json.dumps({"source": name, "path": str(path), "error": str(exc)}))
                raise
            if as_json:
                click.echo(json.dumps(asdict(report)))
            else:
                skipped = f", {report.skipped} already sent by another producer" if report.skipped else ""
                click.echo(f"{report.source}: {report.frames} frames ({report.sent} sent now{skipped}, "
                           f"resumed from {report.resumed_from}) in {report.seconds:.1f}s")
        client.close()


def _camera_options(command: Callable[..., None]) -> Callable[..., None]:
    """Flags shared by `camera` and `cameras` (for `cameras` they are defaults the file's entries override)."""
    options = [
        click.option("--fps", type=click.FloatRange(0, 240, min_open=True), default=None,
                     help="Frames per second sent to the workers (the camera may deliver more). Required: here for "
                          "`camera`; here or per camera in the file for `cameras`."),
        click.option("--roi", default=None, metavar="X,Y,W,H", help="Crop this region (camera pixels) first."),
        click.option("--transport", type=click.Choice(["raw", "jpeg"]), default=None,
                     help="Pixels on the stream: raw (default) or JPEG."),
        click.option("--jpeg-quality", type=click.IntRange(1, 100), default=None, help="For --transport jpeg."),
        click.option("--max-age-ms", type=click.IntRange(1), default=None,
                     help="Workers skip frames older than this [settings.max_age_ms]."),
        click.option("--maxlen", type=click.IntRange(1), default=None,
                     help="Undelivered frames kept per camera; older ones are dropped [settings.live_maxlen]."),
        click.option("--duration", type=click.FloatRange(0, min_open=True), default=None,
                     help="Stop after this many seconds and print a report; exit 7 if a camera sent no frame in "
                          "that time (default: run until SIGTERM, retrying)."),
        click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
                     help="Serve Prometheus metrics on this port [settings.metrics_port]."),
        click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@produce.command("camera", epilog="""\b
Examples:
  vigil produce camera rtsp://user:pass@10.0.0.5/stream1 --source gate --fps 5
  vigil produce camera http://10.0.0.7/video.mjpg --source desk --fps 2 --roi 100,50,640,480
  vigil produce camera 0 --source usb --fps 10 --duration 60 --json     # /dev/video0 for a minute
""")
@click.argument("url")
@click.option("--source", required=True, help="Camera id: its stream is NAMESPACE:{ID}:frames.")
@_camera_options
@click.pass_obj
def produce_camera_cmd(settings: Settings, url: str, source: str, **flags: Any) -> None:
    """Stream a live camera (RTSP, HTTP MJPEG, or USB device number) until SIGTERM.

    The freshest frame is sampled at --fps; frames the workers cannot take in time are dropped and counted
    (superseded at the producer, trimmed from the stream, stale at the workers). A lost camera is retried
    with exponential backoff; its state (connecting/online/offline) is in `vigil status`.

    URL: rtsp:// or rtsps://, http(s):// (MJPEG; HLS/MP4 via FFmpeg), a USB device number or /dev/videoN, or a
    video file (replayed, for tests); anything else exits 2 at once. Exit 7: --duration passed and the camera
    sent no frame in that time (one that was online and dropped is retried and counted, exit 0).
    """
    camera = build_camera({**_camera_defaults(settings, flags), "id": source, "url": url}, f"camera {source}")
    _serve(settings, [camera], flags)


@produce.command("cameras", epilog="""\b
A cameras file (YAML; TOML takes [[cameras]] tables with the same keys):
  cameras:
    - {id: gate, url: "rtsp://user:pass@10.0.0.5/stream1", fps: 5, roi: [100, 50, 640, 480]}
    - {id: desk, url: 0, fps: 2, transport: jpeg}
Keys: id, url, fps, roi, transport, jpeg_quality, max_age_ms, maxlen, results_maxlen.

\b
Examples:
  vigil produce cameras cameras.yaml
  vigil produce cameras cameras.toml --fps 5 --metrics-port 9101   # fps for cameras that set none
""")
@click.argument("file", type=click.Path(path_type=Path))
@_camera_options
@click.pass_obj
def produce_cameras_cmd(settings: Settings, file: Path, **flags: Any) -> None:
    """Stream every camera of a cameras file from this one process until SIGTERM.

    Flags are defaults for keys a camera leaves out. A camera that never connects blocks no other one.
    A bad file or camera URL exits 2 before any camera starts; with --duration, exit 7 names the cameras that
    sent no frame in that time.
    """
    _serve(settings, load_cameras_file(file, _camera_defaults(settings, flags)), flags)


def _camera_defaults(settings: Settings, flags: dict[str, Any]) -> dict[str, Any]:
    defaults = {"max_age_ms": settings.max_age_ms, "maxlen": settings.live_maxlen,
                "results_maxlen": settings.results_maxlen}
    keys = ("fps", "roi", "transport", "jpeg_quality", "max_age_ms", "maxlen")
    return {**defaults, **{k: flags[k] for k in keys if flags.get(k) is not None}}


def _serve(settings: Settings, cameras: list[CameraConfig], flags: dict[str, Any]) -> None:
    spec = Bundle.load(settings.bundle, verify_hashes=False).spec.input
    timing = LiveTiming(settings.reconnect_min_s, settings.reconnect_max_s, settings.stall_timeout_s)
    port = flags["metrics_port"] if flags["metrics_port"] is not None else settings.metrics_port
    if port is not None:
        log.info("Prometheus metrics on port %d", serve(port))
    stop = threading.Event()
    with broker_url(settings.redis_url) as url, stop_on_signals(stop, "stopping cameras"):
        client = connect(url, retries=0)  # a re-sent XADD would duplicate a frame; a lost one is only a drop
        reports = run_cameras(client, settings.namespace, cameras, spec, timing, stop, flags["duration"])
        client.close()
    for report in reports:
        if flags["as_json"]:
            click.echo(json.dumps(asdict(report)))
        else:
            click.echo(f"{report.id}: {report.state}, captured {report.captured}, produced {report.produced}, "
                       f"dropped superseded {report.dropped_superseded}, unpublished {report.dropped_unpublished}, "
                       f"trimmed {report.dropped_trimmed}, "
                       f"reconnects {report.reconnects}")
    error = refusal(reports) or never_online(reports, flags["duration"])
    if left_behind():
        _exit_before_finalizing(error.exit_code if error else 0)
    if error is not None:
        raise error


def never_online(reports: list[CameraReport], duration: float | None) -> SourceError | None:
    """For a bounded run: the error naming the cameras that sent no frame at all (a camera that was online and
    then dropped is not one: it was retried and its drops are counted). None for an unbounded run."""
    silent = [r for r in reports if r.captured == 0]
    if duration is None or not silent:
        return None
    why = "; ".join(f"{r.id} ({r.last_error or 'still connecting'})" for r in silent)
    return SourceError(f"no frame in {duration:g} s from {len(silent)} of {len(reports)} camera(s): {why}. "
                       "Check the URL, the network and the credentials (or give the camera a longer --duration).")


def _exit_before_finalizing(code: int) -> None:
    """A camera thread is still blocked in an open or a read. CPython < 3.14 ends a daemon thread that wakes up
    during interpreter finalization with pthread_exit, and unwinding that through OpenCV's C++ frames aborts the
    process ("terminate called without an active exception", exit 134 after a clean stop; fixed upstream by
    gh-87135). So the process ends from atexit, after the output is flushed and before that stage."""

    def exit_now() -> None:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    atexit.register(exit_now)


