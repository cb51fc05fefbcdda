"""GOP-parallel decoding of one video file: K single-threaded decoders, each decoding whole chunks of GOPs and
preprocessing them in its own thread, while the caller receives the frames strictly in order (the chunk at
the head streams as it is decoded; the ones behind it decode in parallel).

Why: one ``cv2.VideoCapture`` (FFmpeg frame threads, then a partly serial YUV->BGR conversion) is the
producer's ceiling on 720p H.264, and a single-threaded decoder spends the least CPU per frame (MJPEG: ~30%
less than OpenCV's default capture; ``vigil bench pipeline`` times both). Chunks that begin just after a
keyframe decode independently. OpenCV releases the GIL while it decodes and resizes, so threads run in
parallel.

Where the keyframes are comes from ffprobe's packet list, without decoding: a keyframe's frame index is the
rank of its pts among all packets' pts (B-frames make decode order differ from presentation order).
Each decoder checks that it decoded the frames that map says: the first and last frame of a chunk must carry
the pts ffprobe listed for them (``CAP_PROP_POS_MSEC``: OpenCV's frame numbers are derived from timestamps and
drift on variable frame rate files, the pts do not), and the file must end right after the last frame. When
that fails it raises ``ChunkMismatch`` and the caller decodes the rest sequentially instead.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from common.bundle import InputSpec
from common.errors import SourceError
from producers.roi import Roi, prepare

log = logging.getLogger(__name__)
# A seek is not free: OpenCV's seek (cap_ffmpeg_impl.hpp, CvCapture_FFMPEG::seek) lands on the keyframe at or
# before frame - 16 and decodes forward. Chunks therefore start 16 + SEEK_MARGIN frames after a keyframe
# (``split``): each chunk after the first re-decodes those 20 frames, not a whole GOP. The margin is there
# because OpenCV turns the frame number into a timestamp with the average frame rate, which can fall just
# before the keyframe's own pts (Big Buck Bunny: a seek to keyframe + 16 decoded a whole GOP, to keyframe + 18
# did not). Smaller GOPs are merged into chunks of at least MIN_CHUNK_FRAMES; intra-only video (every frame a
# keyframe: MJPEG, ProRes...) uses longer chunks, so the 20 frames are < 10% of each.
SEEK_DELTA = 16
SEEK_MARGIN = 4
MIN_CHUNK_FRAMES = 64
INTRA_CHUNK_FRAMES = 256
EMIT_EVERY = 8  # a decoder hands frames to the reader in groups of this many (one lock + wake-up per group)
MAX_CHUNK_BYTES = 64 << 20  # preprocessed pixels of one chunk; K+1 chunks are held at most
FFPROBE_TIMEOUT_S = 300.0

Frames = list[tuple[float, np.ndarray | None]]


class _Closed(Exception):
    """The pool closed while a decoder was in a chunk."""


class ChunkMismatch(SourceError):
    """A decoder did not find a chunk's frames where the keyframe map put them."""


@dataclass(frozen=True)
class FrameMap:
    """Every frame's presentation time in ms from the stream's start (what ``CAP_PROP_POS_MSEC`` reports), in
    presentation order, and the indices of the keyframes."""

    times_ms: list[float]
    keys: list[int]


@dataclass(frozen=True)
class Chunk:
    """Frames ``[start, end)`` in presentation order; ``start`` is a keyframe."""

    start: int
    end: int
    last: bool
    wanted: tuple[int, ...]  # indices of the sampled frames, ascending
    skipped: int  # the first ``skipped`` of them are before the resume point: no pixels
    first_ms: float  # pts of frames ``start`` and ``end - 1``
    last_ms: float

    @property
    def with_pixels(self) -> int:
        return len(self.wanted) - self.skipped


def frame_map(path: Path, running: list[subprocess.Popen[str]] | None = None) -> FrameMap | None:
    """The frame map of the first video stream, or None when ffprobe cannot tell. ``running`` receives the
    ffprobe process while it runs, so that a caller that stops early can kill it rather than wait for it."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        log.debug("ffprobe not found on PATH")
        return None
    cmd = [ffprobe, "-v", "error", "-select_streams", "v:0", "-show_entries",
           "stream=time_base,start_pts:packet=pts,flags", "-of", "csv", str(path)]
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            if running is not None:
                running.append(proc)
            try:
                out, err = proc.communicate(timeout=FFPROBE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd, out, err)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("ffprobe failed on %s: %s", path, exc)
        return None
    try:
        return _parse_packets(out.splitlines())
    except ValueError as exc:  # "N/A" timestamps: no presentation order to rank by
        log.debug("ffprobe's packet list of %s is unusable: %s", path, exc)
        return None


def _parse_packets(lines: list[str]) -> FrameMap:
    pts: list[int] = []
    key_pts: list[int] = []
    start, time_base = 0, Fraction(0)
    for line in lines:
        fields = line.split(",")
        if fields[0] == "stream" and len(fields) >= 3:
            time_base, start = Fraction(fields[1]), int(fields[2])
        elif fields[0] == "packet" and len(fields) >= 3 and "D" not in fields[2]:  # discarded: never shown
            pts.append(int(fields[1]))
            if "K" in fields[2]:
                key_pts.append(pts[-1])
    rank = {value: index for index, value in enumerate(sorted(pts))}
    if len(rank) != len(pts) or not time_base:
        raise ValueError("duplicate pts or no time base")
    times_ms = [float((value - start) * time_base * 1000) for value in sorted(pts)]
    return FrameMap(times_ms, sorted(rank[value] for value in key_pts))


def split(keys: list[int], total: int, min_frames: int = MIN_CHUNK_FRAMES, first: int = 0) -> list[tuple[int, int]]:
    """``[start, end)`` spans, each >= ``min_frames`` long; every start after the first is a keyframe +
    ``SEEK_DELTA + SEEK_MARGIN``, so OpenCV's seek to it lands on that keyframe and decodes only those frames
    before it (a start *at* the keyframe would land on the keyframe before it: a whole GOP re-decoded). The
    chunk before decodes straight through that keyframe. The first span starts at ``first`` (a decoder already
    standing there continues without a seek)."""
    starts = [first]
    for key in keys:
        start = key + SEEK_DELTA + SEEK_MARGIN
        if start - starts[-1] >= min_frames and total - start >= min_frames:
            starts.append(start)
    return list(zip(starts, [*starts[1:], total], strict=True))


def decode_parallel(path: Path, chunks: list[Chunk], fps: float, spec: InputSpec, decoders: int,
                    first_cap: cv2.VideoCapture | None = None,
                    roi: Roi | None = None) -> Iterator[tuple[float, np.ndarray | None]]:
    """Yield every chunk's ``(media_ts, pixels or None)``, in order, as soon as each is decoded (the chunk at
    the head streams; the ones behind it decode in parallel). ``first_cap``, a decoder standing at the first
    chunk's start, decodes that chunk. Pixels are each frame's ``roi`` (all of it for None) preprocessed."""
    pool = _ChunkPool(path, chunks, fps, spec, decoders, first_cap, roi)
    try:
        for index in range(len(chunks)):
            yield from pool.take(index)
    finally:
        pool.close()


@dataclass
class _Buffer:
    """One chunk's decoded frames, shared by its decoder (``emit``, ``finish``) and the reader (under ``cond``)."""

    cond: threading.Condition
    items: Frames = field(default_factory=list)
    finished: bool = False
    error: Exception | None = None
    pending: Frames = field(default_factory=list)  # the decoder's, not yet handed over

    def emit(self, item: tuple[float, np.ndarray | None]) -> None:
        self.pending.append(item)
        if len(self.pending) >= EMIT_EVERY:
            self._hand_over()

    def finish(self, error: Exception | None) -> None:
        self.error = error
        self._hand_over(finished=True)

    def _hand_over(self, finished: bool = False) -> None:
        with self.cond:
            self.items += self.pending
            self.finished = finished
            self.cond.notify_all()
        self.pending = []

    def ready(self, read: int) -> bool:
        return len(self.items) > read or self.finished


class _ChunkPool:
    """Decoder threads take chunks in order from a shared counter; at most ``decoders`` chunks are decoding
    or decoded ahead of the one the caller is reading (which may itself still be decoding)."""

    def __init__(self, path: Path, chunks: list[Chunk], fps: float, spec: InputSpec, decoders: int,
                 first_cap: cv2.VideoCapture | None = None, roi: Roi | None = None) -> None:
        self.path, self.chunks, self.fps, self.spec, self.decoders = path, chunks, fps, spec, decoders
        self.roi = roi
        self.handed = {0: first_cap} if first_cap is not None else {}  # chunk index -> a decoder standing there
        self.cond = threading.Condition()
        self.buffers: dict[int, _Buffer] = {}
        self.claimed = 0
        self.taken = 0
        self.closed = False
        self.threads = [threading.Thread(target=self._run, name=f"decode-{n}", daemon=True)
                        for n in range(decoders)]
        for thread in self.threads:
            thread.start()

    def take(self, index: int) -> Iterator[tuple[float, np.ndarray | None]]:
        """Chunk ``index``'s frames as they are decoded; its decoder's error, if any, after the good ones."""
        with self.cond:
            self.taken = index + 1
            self.cond.notify_all()
        read = 0
        while True:
            with self.cond:
                self.cond.wait_for(partial(self._ready, index, read))
                buf = self.buffers[index]
                items, finished, error = buf.items[read:], buf.finished, buf.error
            read += len(items)
            yield from items
            if finished:
                break
        with self.cond:
            del self.buffers[index]
        if error is not None:
            raise error

    def _ready(self, index: int, read: int) -> bool:
        return index in self.buffers and self.buffers[index].ready(read)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        for thread in self.threads:
            thread.join()
        for cap in self.handed.values():  # never claimed (closed early)
            cap.release()

    def _prepare(self, index: int, img: np.ndarray) -> np.ndarray:
        return prepare(img, self.spec, self.roi, f"frame {index} of {self.path.name}")

    def _emit(self, buf: _Buffer, item: tuple[float, np.ndarray | None]) -> None:
        if self.closed:  # the reader is gone (Ctrl-C, an error): stop mid-chunk, so that close() joins at once
            raise _Closed
        buf.emit(item)

    def _claim(self) -> int | None:
        with self.cond:
            self.cond.wait_for(lambda: self.closed or self.claimed >= len(self.chunks)
                               or self.claimed < self.taken + self.decoders)
            if self.closed or self.claimed >= len(self.chunks):
                return None
            self.claimed += 1
            self.buffers[self.claimed - 1] = _Buffer(self.cond)
            return self.claimed - 1

    def _run(self) -> None:
        cap: cv2.VideoCapture | None = None
        try:
            while (index := self._claim()) is not None:
                buf = self.buffers[index]
                error: Exception | None = None
                with self.cond:
                    handed = self.handed.pop(index, None)
                if handed is not None:
                    if cap is not None:
                        cap.release()
                    cap = handed
                try:
                    if cap is None:
                        cap = open_single_threaded(self.path)
                    _decode_chunk(cap, self.chunks[index], self.fps, self._prepare, partial(self._emit, buf),
                                  lambda: self.closed)
                except _Closed:
                    return
                except Exception as exc:  # raised again in the caller's thread by take(), after the good frames
                    error = exc
                buf.finish(error)
        finally:
            if cap is not None:
                cap.release()


def open_single_threaded(path: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    if not cap.isOpened():
        raise SourceError(f"{path} cannot be opened as a video (OpenCV/FFmpeg). Is it a video file?")
    return cap


def _decode_chunk(cap: cv2.VideoCapture, chunk: Chunk, fps: float, prepare: Callable[[int, np.ndarray], np.ndarray],
                  emit: Callable[[tuple[float, np.ndarray | None]], None],
                  closed: Callable[[], bool] = lambda: False) -> None:
    if not chunk.last and chunk.with_pixels == 0:  # nothing to show: no need to decode it
        for index in chunk.wanted:
            emit((index / fps, None))
        return
    if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) != chunk.start:
        cap.set(cv2.CAP_PROP_POS_FRAMES, chunk.start)
    tolerance_ms = 250.0 / fps
    checks = {chunk.start: chunk.first_ms, chunk.end - 1: chunk.last_ms}
    wanted = set(chunk.wanted)
    first_pixels = chunk.wanted[chunk.skipped] if chunk.with_pixels else chunk.end
    for index in range(chunk.start, chunk.end):
        if index % 32 == 0 and closed():  # sparse sampling emits rarely: the pool's close() must not wait long
            raise _Closed
        if not cap.grab():
            raise ChunkMismatch(f"frame {index} is missing (ffprobe counted {chunk.end} up to here)")
        if index in checks and abs(cap.get(cv2.CAP_PROP_POS_MSEC) - checks[index]) > tolerance_ms:
            raise ChunkMismatch(f"frame {index} is at {cap.get(cv2.CAP_PROP_POS_MSEC):.1f} ms, ffprobe says "
                                f"{checks[index]:.1f} ms")
        if index not in wanted:
            continue  # grabbed, not converted to BGR
        pixels = None
        if index >= first_pixels:
            ok, img = cap.retrieve()
            if not ok:
                raise ChunkMismatch(f"frame {index} cannot be retrieved")
            pixels = prepare(index, img)
        emit((index / fps, pixels))
    if chunk.last and cap.grab():
        raise ChunkMismatch(f"the video goes on after frame {chunk.end - 1}, the last one ffprobe listed")
