"""A camera-resolution conveyor video: photos with known labels on a moving, textured belt, as a fixed camera
framed on the belt would film them (640x480 by default; any size, 1280x720 too).

Each frame is the belt (a dark, procedurally textured strip that moves ``speed`` pixels a frame: grain,
streaks along the belt, seams across it, and a fixed lamp's lighting gradient over it), one item composited
in its centre and held for ``hold`` frames, then sensor noise of its own. The item's longer side is
``item_fraction`` of the frame's shorter side: a camera framed on the belt, with the item filling most of a
centre crop and some belt around it, never cut off. Everything is deterministic from ``seed``.

Unlike ``vigil_bench/conveyor.py`` (224x224 squares upscaled on 8x8 JPEG blocks, so the codec barely touches
them), these frames are not square and the model has never seen their background: the video tests how a
bundle's preprocessing (``spec.input.resize``) meets a real camera's frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import cv2
import numpy as np

from common.errors import DataError
from vigil_bench.photos import Photos

FPS = 25.0
DEFAULT_SIZE = (640, 480)
# 0.875 of the shorter side: the item fills most of a centre crop (a camera framed on the belt), with a
# margin of belt around it, and the whole item stays in the frame.
DEFAULT_ITEM_FRACTION = 0.875
BELT_LEVEL = 46.0  # mean belt brightness (0..255): a dark rubber belt
GRAIN_SIGMA, STREAK_SIGMA, SEAM_DEPTH = 9.0, 6.0, 18.0  # its texture, in 0..255 levels
SENSOR_SIGMA = 3.0  # per-frame sensor noise, standard deviation in 0..255 levels
MATTE_RANGE = 24.0  # a matte item is opaque this many levels away from its ground; fainter pixels blend
JPEG_QUALITY = 90


class Codec(StrEnum):
    """The codecs OpenCV's FFmpeg backend writes here, each with its container."""

    MJPG = "mjpg"
    MP4V = "mp4v"

    @property
    def fourcc(self) -> int:
        return cv2.VideoWriter.fourcc(*("MJPG" if self is Codec.MJPG else "mp4v"))

    @property
    def suffix(self) -> str:
        return ".avi" if self is Codec.MJPG else ".mp4"


@dataclass(frozen=True)
class CameraConveyor:
    path: Path
    labels: np.ndarray  # (n,) the items' classes (bundle label indices), in conveyor order
    hold: int
    size: tuple[int, int]  # frame width, height
    codec: Codec

    @property
    def frames(self) -> int:
        return len(self.labels) * self.hold

    def label_of_frame(self, seq: int) -> int:
        return int(self.labels[seq // self.hold])


class Belt:
    """The belt as a frame-sized view of a periodic textured strip; ``at(t)`` is the belt in frame ``t``."""

    def __init__(self, width: int, height: int, seed: int, speed: int | None = None) -> None:
        rng = np.random.default_rng(seed)
        seam = max(8, height // 6)  # seams across the belt, every sixth of the frame height
        self.period = seam * -(-2 * width // seam)  # >= two frame widths, whole seams: no jump at the wrap
        self.speed = speed or max(1, width // 80)
        strip = _belt_strip(rng, self.period, height, seam)
        self.strip = np.concatenate([strip, strip[:, :width]], axis=1)  # any frame-wide window is one slice
        self.light = _lighting(width, height)
        self.width = width

    def at(self, t: int) -> np.ndarray:
        x0 = -t * self.speed % self.period  # the belt runs left to right
        belt: np.ndarray = self.strip[:, x0:x0 + self.width] * self.light
        return belt


class SensorNoise:
    """Per-frame sensor noise: a random window of one of a few pre-drawn noise fields (drawing a fresh
    640x480x3 field costs more than the rest of the frame together)."""

    FIELDS, SLACK = 8, 64

    def __init__(self, width: int, height: int, seed: int) -> None:
        self.rng = np.random.default_rng([seed, 1])
        shape = (self.FIELDS, height + self.SLACK, width + self.SLACK, 3)
        self.fields = self.rng.standard_normal(shape, np.float32) * SENSOR_SIGMA
        self.size = (width, height)

    def next(self) -> np.ndarray:
        k, y0, x0 = self.rng.integers(0, (self.FIELDS, self.SLACK, self.SLACK))
        field: np.ndarray = self.fields[k, y0:y0 + self.size[1], x0:x0 + self.size[0]]
        return field


def _belt_strip(rng: np.random.Generator, period: int, height: int, seam: int) -> np.ndarray:
    """(height, period, 3) float32: grain, streaks along the belt, dark seams across it, a warm tint."""
    grain = cv2.GaussianBlur(rng.standard_normal((height, period), np.float32), (0, 0), 1.0) * GRAIN_SIGMA
    coarse = rng.standard_normal((max(2, height // 3), max(2, period // 24)), np.float32)
    streaks = cv2.resize(coarse, (period, height), interpolation=cv2.INTER_LINEAR) * STREAK_SIGMA
    seams = np.zeros(period, np.float32)
    for x0 in range(0, period, seam):
        seams[x0:x0 + max(2, seam // 12)] = -SEAM_DEPTH
    gray = BELT_LEVEL + grain + streaks + seams[None, :]
    tint = np.asarray([0.94, 1.0, 1.07], np.float32)  # BGR: a slightly warm, not neutral, dark rubber
    return np.clip(gray, 0, 255)[:, :, None] * tint


def _lighting(width: int, height: int) -> np.ndarray:
    """(height, width, 1) gain of a lamp off to one side: brighter left, dimmer right, darker corners."""
    x = np.linspace(-1.0, 1.0, width, dtype=np.float32)
    y = np.linspace(-1.0, 1.0, height, dtype=np.float32)
    ramp = 1.1 - 0.2 * (x[None, :] + 1) / 2
    vignette = 1.0 - 0.12 * (x[None, :] ** 2 + y[:, None] ** 2) / 2
    gain: np.ndarray = (ramp * vignette)[:, :, None]
    return gain


def item_layer(scene: np.ndarray, photos: Photos, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The scene scaled so that its longer side is ``side`` pixels, as float32 BGR, and its alpha (H, W, 1):
    1 everywhere for a photo, the distance from the ground for a matte item."""
    h, w = scene.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Enlarged by pixel replication: preprocessing's area shrink then recovers the photo's own pixels. A
    # bilinear enlargement is a blur the model never saw, which alone costs the shipped bundle ~2 points.
    shrinking = size[0] < w
    big = cv2.resize(scene, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_NEAREST)
    if big.ndim == 2:
        big = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
    layer = big.astype(np.float32)
    if not photos.matte:
        return layer, np.ones((*layer.shape[:2], 1), np.float32)
    distance = np.abs(layer.mean(axis=2, keepdims=True) - photos.ground)
    return layer, np.clip(distance / MATTE_RANGE, 0.0, 1.0)


def build_camera_conveyor(out: Path, photos: Photos, hold: int = 2, size: tuple[int, int] = DEFAULT_SIZE,
                          item_fraction: float = DEFAULT_ITEM_FRACTION, codec: Codec = Codec.MJPG, seed: int = 0,
                          progress: Callable[[int], None] | None = None) -> CameraConveyor:
    """Write every photo, ``hold`` frames each, on the belt at ``out``; ``progress(n)`` after each item."""
    width, height = size
    writer = cv2.VideoWriter(str(out), codec.fourcc, FPS, size)
    if not writer.isOpened():
        raise DataError(f"OpenCV cannot write a {codec.value} video at {out}.")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, JPEG_QUALITY)
    belt = Belt(width, height, seed)
    noise = SensorNoise(width, height, seed)
    side = max(1, round(item_fraction * min(width, height)))
    t = 0
    try:
        for scene in photos.images:
            layer, alpha = item_layer(scene, photos, side)
            y0, x0 = (height - layer.shape[0]) // 2, (width - layer.shape[1]) // 2
            window = np.s_[y0:y0 + layer.shape[0], x0:x0 + layer.shape[1]]
            for _ in range(hold):
                frame = belt.at(t)
                frame[window] = alpha * layer + (1 - alpha) * frame[window]
                frame += noise.next()
                writer.write(np.clip(frame, 0, 255).astype(np.uint8))
                t += 1
            if progress:
                progress(1)
    finally:
        writer.release()
    return CameraConveyor(out, photos.labels, hold, size, codec)


def parse_size(text: str) -> tuple[int, int]:
    """``640x480`` -> (640, 480); ``ValueError`` unless both are even and 32..4096 (what encoders accept)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r} must be WIDTHxHEIGHT in pixels, e.g. 640x480 or 1280x720")
    width, height = int(parts[0]), int(parts[1])
    if not all(32 <= v <= 4096 and v % 2 == 0 for v in (width, height)):
        raise ValueError(f"{text!r}: width and height must be even, from 32 to 4096 pixels")
    return width, height
