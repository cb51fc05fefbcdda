"""``vigil model collect``: sample the frames of a video file, an image folder or a camera into an image folder,
to be sorted into class subfolders and trained on (``vigil model train --data DIR``).

Frames are saved as decoded, or cut to an ROI, never preprocessed: they are training photos, which training
prepares for the model it trains. Sampling is the file producer's (``Sampling``: every Nth frame, or a rate in
media time; for a camera, in capture time). No TensorFlow here.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from common.errors import ConfigError, DataError, Interrupted, SourceError
from common.streams import SOURCE_RE
from producers.cameras.camera import LiveTiming
from producers.cameras.capture import open_capture
from producers.cameras.config import check_camera_url, device_number, redact_password
from producers.files.producer import check_roi
from producers.files.sources import (
    Sampling,
    check_readable,
    default_source_name,
    estimate_frames,
    iter_frames,
    sampled,
)
from producers.roi import Roi, cut

log = logging.getLogger(__name__)
Format = Literal["jpg", "png"]
JPEG_QUALITY = 95  # training photos: artefacts of a lower quality would be learnt as features
SEQ_DIGITS = 6  # NAME-000042.png: name order is capture order up to a million frames


class SourceKind(StrEnum):
    VIDEO = "video"
    FOLDER = "folder"
    CAMERA = "camera"


@dataclass(frozen=True)
class CollectJob:
    source: str  # a video file, an image folder, or a camera URL or device (``URL_FORMS``)
    out: Path
    sampling: Sampling = field(default_factory=Sampling)
    count: int | None = None  # stop after this many images; a camera without it runs until stopped
    roi: Roi | None = None
    fmt: Format = "png"
    name: str | None = None  # file name prefix; None: named after the source (``default_name``)
    append: bool = False  # write into a folder that is not empty


@dataclass
class CollectReport:
    source: str  # a camera's URL with its password masked
    kind: str
    out: str
    written: int
    first: str | None
    last: str | None
    size: tuple[int, int] | None  # (width, height) of the images written
    seconds: float
    next: str


def source_kind(source: str) -> SourceKind:
    """What ``source`` is; ``ConfigError`` naming the accepted forms when it is none of them."""
    path = Path(source)
    if path.is_dir():
        return SourceKind.FOLDER
    if path.is_file():
        return SourceKind.VIDEO
    if "://" not in source and device_number(source) is None:
        raise ConfigError(f"SOURCE {source!r} is neither a video file, an image folder nor a camera (rtsp://, "
                          "rtsps://, http(s):// MJPEG, /dev/videoN or a device number). Check the path.")
    try:
        check_camera_url(source)
    except ValueError as exc:
        raise ConfigError(f"SOURCE {exc}") from None
    return SourceKind.CAMERA


def default_name(source: str, kind: SourceKind) -> str:
    """The file name prefix: the file or folder name, ``videoN`` for a USB device, else the camera's host."""
    if kind is not SourceKind.CAMERA:
        return default_source_name(Path(source))
    if (device := device_number(source)) is not None:
        return f"video{device}"
    host = urllib.parse.urlsplit(source).hostname or "camera"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", host)[:128]


def collect(job: CollectJob, timing: LiveTiming | None = None, progress: bool = False,
            stop: threading.Event | None = None) -> CollectReport:
    """Write the sampled frames of ``job.source`` to ``job.out`` as NAME-NNNNNN.jpg (or .png), then report.
    ``stop`` (set by a signal): stop after the image being written; a camera ends so normally, a file raises
    ``Interrupted`` (exit 130) after the images written so far."""
    kind = source_kind(job.source)
    if kind is not SourceKind.CAMERA:  # before --out is touched: a bad path or ROI leaves nothing behind
        check_readable(Path(job.source))
        if job.roi is not None:
            check_roi(Path(job.source), job.roi)
    name = job.name or default_name(job.source, kind)
    if not SOURCE_RE.match(name):
        raise ConfigError(f"--name {name!r}: use 1-128 letters, digits, '_', '.' or '-' (it starts each file name).")
    first_seq = _open_out(job.out, name, job.append)
    shown = redact_password(job.source) if kind is SourceKind.CAMERA else job.source
    stop = stop or threading.Event()
    started = time.monotonic()
    frames = _frames(job, kind, timing or LiveTiming(), stop)
    with closing(frames), _bar(progress, name, _expected(job, kind)) as advance:
        pattern = f"{name}-{{:0{SEQ_DIGITS}d}}.{job.fmt}"
        written, size = _write_all(frames, job, pattern, first_seq, shown, stop, advance)
    if kind is SourceKind.CAMERA and not written:
        raise SourceError(f"camera {shown} delivered no frame. Check the URL, the network and the credentials.")
    report = CollectReport(shown, kind.value, str(job.out), len(written), _name(written, 0), _name(written, -1),
                           size, time.monotonic() - started, next_step(job.out))
    if stop.is_set() and kind is not SourceKind.CAMERA:
        raise Interrupted(f"{shown}: stopped; {render(report)}. Run again with --append for more (numbering "
                          "continues after the last one).")
    return report


def _write_all(frames: Iterator[np.ndarray], job: CollectJob, pattern: str, seq: int, shown: str,
               stop: threading.Event, advance: Callable[[], None]) -> tuple[list[Path], tuple[int, int] | None]:
    """Cut each frame to the ROI and write it as ``pattern.format(seq)``, seq counting up, until the frames end,
    ``job.count`` images are written or ``stop`` is set; the files and the (width, height) of the last."""
    written: list[Path] = []
    size = None
    for img in frames:
        if stop.is_set():
            break
        part = cut(img, job.roi, f"frame {len(written)} of {shown}")
        written.append(_write(job.out / pattern.format(seq + len(written)), part, job.fmt))
        size = (int(part.shape[1]), int(part.shape[0]))
        advance()
        if job.count is not None and len(written) >= job.count:
            break
    return written, size


def next_step(out: Path) -> str:
    return f"sort them into {out}/<class>/ subfolders, then: vigil model train --data {out}"


def render(report: CollectReport) -> str:
    if not report.written:
        return f"no frame of {report.source} written to {report.out}"
    size = f"{report.size[0]}x{report.size[1]} " if report.size else ""
    return (f"wrote {report.written} {size}images of {report.source} to {report.out} ({report.first} .. "
            f"{report.last}) in {report.seconds:.1f} s")


def _open_out(out: Path, name: str, append: bool) -> int:
    """Make ``out`` if missing; the first seq to write: 0 in a new folder; with ``append``, one after the
    highest NAME-seq already in it or in its class subfolders (frames sorted before keep their names)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder.")
    if out.is_dir() and any(out.iterdir()) and not append:
        raise ConfigError(f"--out {out} is not empty. Pass --append to add frames to it (numbering continues after "
                          "the highest there), or a new folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out} cannot be made: {exc}") from exc
    pattern = re.compile(rf"{re.escape(name)}-(\d+)\.(?:jpg|png)")
    taken = [int(m.group(1)) for p in out.rglob(f"{name}-*") if (m := pattern.fullmatch(p.name))]
    return max(taken, default=-1) + 1


def _frames(job: CollectJob, kind: SourceKind, timing: LiveTiming,
            stop: threading.Event) -> Generator[np.ndarray, None, None]:
    if kind is not SourceKind.CAMERA:
        for _ts, img in iter_frames(Path(job.source), job.sampling):
            yield img
        return
    for _index, _ts, img in sampled(_camera_reads(job.source, timing, stop), job.sampling):
        yield img


def _camera_reads(url: str, timing: LiveTiming, stop: threading.Event) -> Iterator[tuple[float, np.ndarray]]:
    """``(seconds since open, frame)`` of every frame the camera delivers, until ``stop`` or a failed read
    (no reconnect: what was written is kept, and a run with --append goes on)."""
    cap = open_capture(url, device_number(url), timing.open_timeout_s, timing.stall_timeout_s)
    try:
        opened = time.monotonic()
        while not stop.is_set():
            ok, img = cap.read()
            if not ok or img is None:
                log.warning("camera %s stopped delivering frames; ending the collection", redact_password(url))
                return
            yield time.monotonic() - opened, img
    finally:
        cap.release()


def _expected(job: CollectJob, kind: SourceKind) -> int | None:
    found = None if kind is SourceKind.CAMERA else estimate_frames(Path(job.source), job.sampling)
    if job.count is None:
        return found
    return job.count if found is None else min(found, job.count)


def _write(path: Path, img: np.ndarray, fmt: Format) -> Path:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if fmt == "jpg" else []
    ok, data = cv2.imencode(f".{fmt}", img, params)
    if not ok:
        raise DataError(f"{path}: OpenCV cannot encode this frame as {fmt}.")
    try:
        path.write_bytes(data.tobytes())
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc}. Free some space or pick another --out.") from exc
    return path


def _name(written: list[Path], index: int) -> str | None:
    return written[index].name if written else None


@contextmanager
def _bar(enabled: bool, what: str, total: int | None) -> Iterator[Callable[[], None]]:
    console = Console(stderr=True)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not enabled) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)


