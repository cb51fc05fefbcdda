"""``vigil produce file``: a video file or image folder → preprocessed frames on the source's stream."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import redis
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from common.bundle import InputSpec
from common.errors import Interrupted, SourceError
from common.schemas import Encoding, Frame
from common.settings import DEFAULT_PACK_FRAMES
from producers.files.publisher import SourcePublisher
from producers.files.sources import Sampling, estimate_frames, frame_size, image_files, iter_preprocessed
from producers.roi import Roi, check_fits, format_roi

log = logging.getLogger(__name__)
CHUNK = 32
TRUNCATED_BELOW = 0.9  # fewer frames than this share of what the container announces: a warning


@dataclass
class FileJob:
    path: Path
    source: str
    spec: InputSpec
    sampling: Sampling = field(default_factory=Sampling)
    encoding: Encoding = "raw"
    jpeg_quality: int = 95
    restart: bool = False
    realtime: bool = False  # pace frames at media speed, like a camera would deliver them
    decoders: int = 0  # 0: auto (cores + 1); >= 2: GOP-parallel decoder threads (producers/files/gop.py); 1: one
    pack: int = DEFAULT_PACK_FRAMES  # frames per stream entry (realtime: 1, each frame leaves when it is due)
    roi: Roi | None = None  # x, y, w, h: each frame is cut to this region before preprocessing (``check_roi``)


@dataclass
class FileReport:
    source: str
    frames: int
    sent: int
    resumed_from: int
    seconds: float
    paused_s: float
    already_done: bool = False
    expected_frames: int | None = None  # what the container announces (sampled); None when it does not say
    skipped: int = 0  # found already on the stream when sent (another producer of the source sent them)


def produce_file(client: redis.Redis, namespace: str, job: FileJob, high_water: int,
                 progress: bool = False, stop: threading.Event | None = None,
                 broker_patience_s: float = 0.0) -> FileReport:
    """Send every sampled frame not yet on the stream, then the end-of-stream marker.

    ``stop`` (set by a signal handler, ``producers.cli``): stop between two frames, raising ``Interrupted``; what
    was sent stays on the stream and the next run resumes after it. A flag, not KeyboardInterrupt: an exception
    raised at any bytecode could leave a lock of the decoder threads held (a ``with lock:`` entered but not yet
    protected, bpo-29988), and the producer would then hang in its exit for good.

    ``broker_patience_s``: how long a send waits out an unreachable broker (a restart, a failover) before the
    run fails (exit 5; it resumes when run again).

    OpenCV's own thread pool is set to one thread: resizing one frame is too small a job to split (splitting
    it cost ~30% more CPU on 720p, CPU the workers need). One decode thread runs ahead while this thread
    preprocesses and publishes; with ``job.decoders`` >= 2 (or 0, auto, on a multi-core machine), that many
    threads decode and preprocess chunks of GOPs (``producers/files/gop.py``) and this thread only publishes.
    """
    cv2.setNumThreads(1)
    pub = SourcePublisher(client, namespace, job.source, high_water, 1 if job.realtime else job.pack, stop,
                          broker_patience_s)
    start_seq = pub.open(str(job.path.resolve()), job.restart, identity(job))
    try:
        return _send_file(pub, job, start_seq, progress, stop)
    finally:  # done, stopped or failed (an unreadable image, say): this producer no longer writes the source
        with suppress(redis.RedisError):
            pub.release()


def _send_file(pub: SourcePublisher, job: FileJob, start_seq: int, progress: bool,
               stop: threading.Event | None) -> FileReport:
    started = time.monotonic()
    if pub.finished():
        log.info("source %s already complete (%d frames); nothing to do", job.source, start_seq - 1)
        return FileReport(job.source, start_seq - 1, 0, start_seq, 0.0, 0.0, already_done=True)
    if start_seq:
        log.info("source %s: resuming after frame %d", job.source, start_seq - 1)
    total = 0
    paced_from: tuple[float, float] | None = None  # (clock, media ts) of the first frame this run sends
    chunk: list[Frame] = []
    chunk_size = 1 if job.realtime else min(max(CHUNK, job.pack), pub.high_water)
    # closing(): on Ctrl-C (or any error) the decoder threads are stopped and joined before the exception goes on.
    # Left running into interpreter shutdown, a thread inside OpenCV is killed there ("FATAL: exception not
    # rethrown", exit 134) instead of the clean exit 130.
    frames = iter_preprocessed(job.path, job.sampling, job.spec, job.decoders, skip=start_seq, roi=job.roi)
    expected = estimate_frames(job.path, job.sampling)
    with _progress_bar(progress, job.source, expected) as bar, \
            closing(frames):
        pub.on_pause = bar.paused
        for seq, (ts, pixels) in enumerate(frames):
            if stop is not None and stop.is_set():
                pub.send(chunk)  # the frames decoded so far go out: the next run starts after them
                bar.advance(len(chunk))
                raise Interrupted(f"source {job.source}: stopped at frame {seq}; this run sent {pub.stats.sent} "
                                  "frames. Run the same command again to resume after the last one.")
            total = seq + 1
            if pixels is None:  # sent before the resume point
                bar.advance(1)
                continue
            if job.realtime:  # from the first frame sent: a resumed run does not wait out the media time before it
                paced_from = paced_from or (time.monotonic(), ts)
                time.sleep(max(0.0, paced_from[0] + ts - paced_from[1] - time.monotonic()))
            chunk.append(Frame.from_pixels(job.source, seq, pixels, ts, time.time(), job.encoding,
                                           job.jpeg_quality))
            if len(chunk) >= chunk_size:
                pub.send(chunk)
                bar.advance(len(chunk))  # the bar counts frames on the stream, not frames decoded
                chunk = []
        pub.send(chunk)
        bar.advance(len(chunk))
    pub.end(total)
    if expected and total < TRUNCATED_BELOW * expected:
        log.warning("source %s: %s ended after %d frames, but its container announces about %d: the file may be "
                    "truncated or damaged (FFmpeg's messages above may say where). All frames it holds were sent, "
                    "then the end-of-stream marker; for the rest, get the complete file and run again with "
                    "--restart.", job.source, job.path.name, total, expected)
    return FileReport(job.source, total, pub.stats.sent, start_seq, time.monotonic() - started, pub.stats.paused_s,
                      expected_frames=expected, skipped=pub.stats.skipped)


def identity(job: FileJob) -> dict[str, str]:
    """What a resumed run must share with the run it continues (``SourcePublisher.open``): the sampling and the
    region of interest, the model input the frames are preprocessed to, and the content (size and a hash of the
    first and last MiB of the file, or of every image of a folder in order: a re-downloaded copy of the same
    bytes still resumes, a file that changed does not; other files in a folder do not count).

    The ROI is part of the sampling field (``every=5 roi=0,0,640,360``), not a field of its own:
    ``file_open.lua`` compares only the fields a source's record holds, and a record without an ``roi`` field
    would let a run with any ROI resume it."""
    spec = job.spec
    sampling = f"fps={job.sampling.fps:g}" if job.sampling.fps else f"every={job.sampling.every}"
    if job.roi is not None:
        sampling += f" roi={format_roi(job.roi)}"
    try:
        files = image_files(job.path) if job.path.is_dir() else [job.path]
        digest = hashlib.sha256()
        for file in files:
            digest.update(f"{file.name}:{file.stat().st_size}:".encode())
            digest.update(_ends(file))
    except OSError as exc:
        raise SourceError(f"{job.path} cannot be read: {exc}") from exc
    return {"sampling": sampling, "content": digest.hexdigest()[:16],
            "input": f"{spec.height}x{spec.width}x{spec.channels} {spec.dtype} {spec.color} {spec.resize}"
                     f"{' inverted' if spec.invert else ''}"}


def check_roi(path: Path, roi: Roi) -> None:
    """Before the source is registered: ``ConfigError`` (exit 2) naming the ROI and the frame size unless
    ``roi`` fits a video's frames, or a folder's first image (each later image is checked as it is cut)."""
    what = f"the first image of {path}" if path.is_dir() else f"the frames of {path}"
    check_fits(roi, *frame_size(path), what)


def _ends(file: Path, size: int = 1 << 20) -> bytes:
    """The first and last ``size`` bytes of ``file`` (all of it when smaller)."""
    with file.open("rb") as f:
        head = f.read(size)
        f.seek(0, os.SEEK_END)
        if f.tell() <= size:
            return head
        f.seek(max(size, f.tell() - size))
        return head + f.read()


class _Bar:
    """The progress bar's handle: frames on the stream so far, and whether the producer is paused."""

    def __init__(self, progress: Progress | None = None, task: TaskID | None = None, source: str = "") -> None:
        self._progress, self._task, self._source = progress, task, source

    def advance(self, frames: int) -> None:
        if self._progress is not None and self._task is not None and frames:
            self._progress.advance(self._task, frames)

    def paused(self, paused: bool) -> None:
        if self._progress is not None and self._task is not None:
            note = " [yellow](paused: the workers are behind)[/yellow]" if paused else ""
            self._progress.update(self._task, description=f"{self._source}{note}")


@contextmanager
def _progress_bar(enabled: bool, source: str, total: int | None) -> Iterator[_Bar]:
    if not enabled:
        yield _Bar()
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        yield _Bar(progress, progress.add_task(source, total=total), source)
