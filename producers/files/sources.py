"""Frame sources for files: a video file or a folder of images, with sampling. Finite by nature."""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import os
import queue
import re
import shutil
import subprocess
import threading
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from common.bundle import InputSpec
from common.errors import DataError, SourceError
from common.images import IMAGE_SUFFIXES, image_files, read_image
from producers.files.gop import (
    INTRA_CHUNK_FRAMES,
    MAX_CHUNK_BYTES,
    MIN_CHUNK_FRAMES,
    Chunk,
    ChunkMismatch,
    FrameMap,
    decode_parallel,
    frame_map,
    open_single_threaded,
    split,
)
from producers.roi import Roi, prepare

log = logging.getLogger(__name__)
T = TypeVar("T")
AUTO_DECODERS = 4
CHUNKS_PER_DECODER = 4


@dataclass(frozen=True)
class Sampling:
    """Keep every Nth frame, or (when ``fps`` is set) the frames closest to a target rate in media time."""

    every: int = 1
    fps: float | None = None

    def keep(self, index: int, ts: float, next_ts: float) -> bool:
        if self.fps:
            return ts + 1e-6 >= next_ts
        return index % self.every == 0


def auto_decoders() -> int:
    """Decoders for ``--decoders 0``: one more than the cores, at most ``AUTO_DECODERS``; 1 (sequential) on one
    core. A decoder thread also waits — on the GIL for its Python glue, on the reader — so one extra keeps the
    cores busy (2 cores, Big Buck Bunny 720p: the producer alone was faster with 3 than with 2; compare with
    ``vigil produce file --decoders K --json``)."""
    cores = os.cpu_count() or 1
    return 1 if cores < 2 else min(cores + 1, AUTO_DECODERS)


def default_source_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem)[:128] or "source"


def estimate_frames(path: Path, sampling: Sampling) -> int | None:
    if path.is_dir():
        return len(image_files(path)) // sampling.every if not sampling.fps else None
    cap = cv2.VideoCapture(str(path))
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    finally:
        cap.release()
    if total <= 0:
        return None
    if sampling.fps and fps > 0:
        return int(total * min(1.0, sampling.fps / fps)) + 1
    return -(-total // sampling.every)


def iter_frames(path: Path, sampling: Sampling) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(media_ts_seconds, bgr_image)`` for the sampled frames of a video file or image folder."""
    raw = _iter_images(path) if path.is_dir() else prefetch(_iter_video(path))
    for _index, ts, img in sampled(raw, sampling):
        yield ts, img


def iter_preprocessed(path: Path, sampling: Sampling, spec: InputSpec, decoders: int = 1, skip: int = 0,
                      roi: Roi | None = None) -> Generator[tuple[float, np.ndarray | None], None, None]:
    """Yield ``(media_ts_seconds, preprocess(image))`` for the sampled frames, in order, with ``None`` instead
    of pixels for the first ``skip`` of them (a resumed producer already sent those; they are not preprocessed,
    and a GOP-parallel decode does not even decode them). With ``roi``, each image is first cut to that region
    (``producers/roi.py``; one it does not fit raises ``ConfigError``).

    ``decoders`` >= 2 decodes a video with that many single-threaded decoders in parallel, one run of whole
    GOPs each (see ``producers/files/gop.py``); 0 (auto) means ``auto_decoders()``. When the
    file does not allow it (one GOP, no ffprobe, an image folder), or with 1, one FFmpeg-threaded decoder runs
    in a thread while this thread preprocesses. Both give the same pixels.
    """
    if decoders == 0:
        decoders = auto_decoders()
    if decoders >= 2 and path.is_file() and shutil.which("ffprobe") is None:
        log.info("%s: ffprobe is not on PATH, so the keyframes cannot be mapped: one FFmpeg-threaded decoder "
                 "decodes the video (install FFmpeg, as scripts/bootstrap.sh does, to decode runs of GOPs in "
                 "parallel)", path.name)
        decoders = 1
    if decoders < 2 or not path.is_file():
        yield from _iter_sequential(path, sampling, spec, skip, roi)
        return
    sent = 0
    try:
        for item in _iter_parallel(path, sampling, spec, decoders, skip, roi):
            yield item
            sent += 1
    except ChunkMismatch as exc:
        log.warning("%s: %s; decoding the rest sequentially from frame 0", path, exc)
        rest = _iter_sequential(path, sampling, spec, max(skip, sent), roi)
        yield from itertools.islice(rest, sent, None)


def _iter_parallel(path: Path, sampling: Sampling, spec: InputSpec, decoders: int, skip: int,
                   roi: Roi | None) -> Iterator[tuple[float, np.ndarray | None]]:
    """GOP-parallel decoding. While ffprobe maps the keyframes (~0.1 s: a process start and one read of the
    file), one single-threaded decoder already decodes from frame 0 here; the plan then cuts the rest of the
    file into chunks, the first of which that decoder continues without seeking. Without a plan (one GOP, no
    map) one FFmpeg-threaded decoder decodes the video again from the start, unless most of it is decoded
    already."""
    log.info("%s: mapping keyframes with ffprobe (reads the file once, decodes nothing)", path.name)
    with ThreadPoolExecutor(1, thread_name_prefix="ffprobe") as pool:
        probes: list[subprocess.Popen[str]] = []
        mapping = pool.submit(frame_map, path, probes)
        cap = open_single_threaded(path)
        handed_over = False
        try:
            fps = video_fps(cap)
            grabbed = [0]
            frames = _kept_frames(cap, fps, sampling, skip, grabbed)
            sent = 0
            while not mapping.done():  # the prefix: decoded here, in order, while ffprobe works
                item = next(frames, None)
                if item is None:
                    return  # the whole video was shorter than the mapping took
                yield item[0], (prepare(item[1], spec, roi, f"frame {sent} of {path.name}")
                                if item[1] is not None else None)
                sent += 1
            frame_bytes = spec.height * spec.width * spec.channels
            found = mapping.result()
            chunks = _plan_chunks(path, found, fps, sampling, frame_bytes, skip, grabbed[0], decoders)
            if chunks is not None:
                log.debug("%s: GOP-parallel decoding, %d decoders, %d chunks after %d frames decoded while "
                          "mapping", path, decoders, len(chunks), grabbed[0])
                handed_over = True
                yield from decode_parallel(path, chunks, fps, spec, decoders, first_cap=cap, roi=roi)
                return
            total = len(found.times_ms) if found is not None else int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if total > 0 and total - grabbed[0] <= grabbed[0]:
                for seq, (ts, img) in enumerate(prefetch(frames), sent):  # most of it decoded: this decoder ends it
                    yield ts, (prepare(img, spec, roi, f"frame {seq} of {path.name}") if img is not None else None)
                return
            # No plan (one GOP, no map, chunks too big): one FFmpeg-threaded decoder decodes the rest, from frame 0
            # again (its frames before ``sent`` are not preprocessed). Letting this single-threaded decoder go on
            # would hold the producer to one core, on the videos (one long GOP) that cost the most to decode.
            log.debug("%s: one FFmpeg-threaded decoder decodes the rest, from frame 0 again (%d frames decoded while "
                      "mapping)", path, grabbed[0])
            cap.release()
            handed_over = True
            rest = _iter_sequential(path, sampling, spec, max(skip, sent), roi)
            yield from itertools.islice(rest, sent, None)
        finally:
            for probe in probes:  # stopped early (Ctrl-C): the pool's exit must not wait for ffprobe's read
                if probe.poll() is None:
                    probe.kill()
            if not handed_over:
                cap.release()


def _kept_frames(cap: cv2.VideoCapture, fps: float, sampling: Sampling, skip: int,
                 grabbed: list[int]) -> Iterator[tuple[float, np.ndarray | None]]:
    """``(media_ts, image or None before the resume point)`` of the sampled frames, read in order from ``cap``
    (at frame 0); ``grabbed[0]`` counts the frames grabbed so far, i.e. where ``cap`` stands."""
    keep = (index for index, _ts, _ in sampled(((i / fps, i) for i in itertools.count()), sampling))
    kept, seq = next(keep), 0
    while cap.grab():
        index = grabbed[0]
        grabbed[0] += 1
        if index == kept:
            img = None
            if seq >= skip:
                ok, img = cap.retrieve()
                if not ok:
                    raise ChunkMismatch(f"frame {index} cannot be retrieved")
            kept, seq = next(keep), seq + 1
            yield index / fps, img


def _plan_chunks(path: Path, found: FrameMap | None, fps: float, sampling: Sampling, frame_bytes: int, skip: int,
                 first: int, decoders: int) -> list[Chunk] | None:
    """Chunks for frames ``first`` on, or None (with the reason in the debug log): decode sequentially.

    Each chunk after the first re-decodes ~20 frames (the seek), so chunks are as long as they can be while
    every decoder still gets ``CHUNKS_PER_DECODER`` of them (the last ones finish together) and K+1 chunks of
    preprocessed frames fit in memory."""
    if found is None or not found.keys or found.keys[0] != 0:
        log.debug("%s: sequential decoding (no keyframe map from ffprobe)", path)
        return None
    total = len(found.times_ms)
    if first >= total:
        log.debug("%s: sequential decoding (ffprobe lists %d frames, %d were decoded)", path, total, first)
        return None
    shortest = INTRA_CHUNK_FRAMES if len(found.keys) == total else MIN_CHUNK_FRAMES  # intra-only: MJPEG...
    longest = max(shortest, MAX_CHUNK_BYTES // (2 * max(1, frame_bytes)))
    spans = split(found.keys, total, min(longest, max(shortest, (total - first) // (decoders * CHUNKS_PER_DECODER))),
                  first)
    if len(spans) < 2:
        log.debug("%s: sequential decoding (one chunk: keyframes %s)", path, found.keys[:8])
        return None
    wanted = [index for index, _ts, _ in sampled(((i / fps, None) for i in range(total)), sampling)]
    chunks = []
    for start, end in spans:
        lo, hi = bisect.bisect_left(wanted, start), bisect.bisect_left(wanted, end)
        chunks.append(Chunk(start, end, end == total, tuple(wanted[lo:hi]), min(hi - lo, max(0, skip - lo)),
                            found.times_ms[start], found.times_ms[end - 1]))
    if max(chunk.with_pixels for chunk in chunks) * frame_bytes > MAX_CHUNK_BYTES:
        log.debug("%s: sequential decoding (a chunk's frames would exceed %d bytes)", path, MAX_CHUNK_BYTES)
        return None
    return chunks


def _iter_sequential(path: Path, sampling: Sampling, spec: InputSpec, skip: int,
                     roi: Roi | None) -> Iterator[tuple[float, np.ndarray | None]]:
    for seq, (ts, img) in enumerate(iter_frames(path, sampling)):
        yield ts, (prepare(img, spec, roi, f"frame {seq} of {path.name}") if seq >= skip else None)


def sampled(items: Iterable[tuple[float, T]], sampling: Sampling) -> Iterator[tuple[int, float, T]]:
    """``(index, ts, item)`` of the items ``sampling`` keeps; the one place its decisions are made."""
    next_ts = 0.0
    for index, (ts, item) in enumerate(items):
        if sampling.keep(index, ts, next_ts):
            if sampling.fps:
                next_ts = max(next_ts + 1.0 / sampling.fps, ts)
            yield index, ts, item


def prefetch(items: Iterator[T], depth: int = 8) -> Iterator[T]:
    """Run ``items`` in a thread, ``depth`` ahead: OpenCV decodes without the GIL while the caller
    preprocesses and publishes the previous frames (one producer keeps ~2 cores busy instead of 1)."""
    box: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def pump() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                box.put(("item", item))
            box.put(("end", None))
        except BaseException as exc:  # any error (cv2.error, MemoryError...) is raised again in the consumer
            box.put(("error", exc))

    thread = threading.Thread(target=pump, name="decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = box.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a pump waiting on a full queue
            with contextlib.suppress(queue.Empty):
                box.get_nowait()
            thread.join(0.01)


def _iter_video(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    if not path.is_file():
        raise SourceError(f"video file {path} does not exist.")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(f"{path} cannot be opened as a video (OpenCV/FFmpeg). Is it a video file?")
    fps = video_fps(cap)
    try:
        index = 0
        while True:
            ok, img = cap.read()
            if not ok:
                return
            yield index / fps, img
            index += 1
    finally:
        cap.release()


def video_fps(cap: cv2.VideoCapture) -> float:
    """Frame rate that media timestamps are computed with (``index / fps``), by every decoding path."""
    return float(cap.get(cv2.CAP_PROP_FPS) or 25.0)



def check_readable(path: Path) -> None:
    """Raise ``SourceError`` unless ``path`` is a video OpenCV/FFmpeg opens or a folder holding images: checked
    before a producer registers the source, so that a bad path leaves nothing behind (a registered source that
    never ends would hold ``vigil work --burst`` waiting for its end-of-stream marker)."""
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise SourceError(f"folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}). Pass a folder "
                              "of images or a video file.")
        if cv2.imread(str(files[0]), cv2.IMREAD_COLOR) is None:  # the first only: reading them all costs a pass
            raise SourceError(f"image {files[0]} cannot be read (not an image, or damaged). Fix or remove it.")
        return
    open_single_threaded(path).release()


def frame_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of a video's frames, or of the first image of a folder (``check_readable`` passed)."""
    if path.is_dir():
        first = image_files(path)[0]
        if (img := cv2.imread(str(first), cv2.IMREAD_COLOR)) is None:
            raise SourceError(f"image {first} cannot be read (not an image, or damaged). Fix or remove it.")
        return int(img.shape[1]), int(img.shape[0])
    cap = open_single_threaded(path)
    try:
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width <= 0 or height <= 0:  # the container does not say: the first frame does
            ok, img = cap.read()
            if not ok:
                raise SourceError(f"{path} holds no frame OpenCV/FFmpeg can decode.")
            width, height = int(img.shape[1]), int(img.shape[0])
    finally:
        cap.release()
    return width, height


def _iter_images(folder: Path) -> Iterator[tuple[float, np.ndarray]]:
    files = image_files(folder)
    if not files:
        raise SourceError(f"folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    for index, file in enumerate(files):
        try:
            img = read_image(file)  # the reader training uses: a model is served the pixels it was trained on
        except DataError as exc:
            raise SourceError(f"{exc} Then run again with --restart (the folder's content changed, so a resume "
                              "is refused).") from exc
        yield float(index), img
