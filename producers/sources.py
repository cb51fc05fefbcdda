"""Frame sources for files: a video file or a folder of images, with sampling. Finite by nature."""

from __future__ import annotations

import contextlib
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from common.errors import SourceError

T = TypeVar("T")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


@dataclass(frozen=True)
class Sampling:
    """Keep every Nth frame, or (when ``fps`` is set) the frames closest to a target rate in media time."""

    every: int = 1
    fps: float | None = None

    def keep(self, index: int, ts: float, next_ts: float) -> bool:
        if self.fps:
            return ts + 1e-6 >= next_ts
        return index % self.every == 0


def default_source_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem)[:128] or "source"


def estimate_frames(path: Path, sampling: Sampling) -> int | None:
    if path.is_dir():
        return len(_image_files(path)) // sampling.every if not sampling.fps else None
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
    """Yield ``(media_ts_seconds, bgr_or_gray_image)`` for the sampled frames of a video file or image folder."""
    raw = _iter_images(path) if path.is_dir() else prefetch(_iter_video(path))
    next_ts = 0.0
    for index, (ts, img) in enumerate(raw):
        if sampling.keep(index, ts, next_ts):
            if sampling.fps:
                next_ts = max(next_ts + 1.0 / sampling.fps, ts)
            yield ts, img


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
        except SourceError as exc:
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
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
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


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _iter_images(folder: Path) -> Iterator[tuple[float, np.ndarray]]:
    files = _image_files(folder)
    if not files:
        raise SourceError(f"folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    for index, file in enumerate(files):
        img = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise SourceError(f"image {file} cannot be read.")
        if img.ndim == 3 and img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        yield float(index), img
