"""The demo's "conveyor camera": real Fashion-MNIST test images with known labels, each held for a few frames,
upscaled and written with a lossy codec OpenCV can write (MJPG). Items are upscaled 8x with nearest-neighbour
so each source pixel is one 8x8 JPEG block: the codec barely touches it and INTER_AREA recovers it."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common.bundle import InputSpec
from common.errors import DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SCALE = 8
FPS = 25.0


def load_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped): magic, dims, then uint8 data."""
    if not path.is_file():
        raise DataError(f"{path} is missing. Install the Debian package dataset-fashion-mnist or pass --data-dir.")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_test_set(data_dir: Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray]:
    images = load_idx(data_dir / "t10k-images-idx3-ubyte.gz")
    labels = load_idx(data_dir / "t10k-labels-idx1-ubyte.gz")
    return images, labels


@dataclass(frozen=True)
class Conveyor:
    path: Path
    items: np.ndarray  # (n, 28, 28) the original test images, in conveyor order
    labels: np.ndarray  # (n,) their true class indices
    hold: int

    @property
    def frames(self) -> int:
        return len(self.items) * self.hold

    def label_of_frame(self, seq: int) -> int:
        return int(self.labels[seq // self.hold])


def build_conveyor(out: Path, spec: InputSpec, items: int = 500, hold: int = 3, seed: int = 0,
                   data_dir: Path = FASHION_DIR) -> Conveyor:
    """Write ``items`` random test images, ``hold`` frames each, as an MJPG AVI at ``out``."""
    images, labels = load_test_set(data_dir)
    idx = np.random.default_rng(seed).choice(len(images), size=min(items, len(images)), replace=False)
    side = images.shape[1] * SCALE
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (side, side))
    if not writer.isOpened():
        raise DataError(f"OpenCV cannot write an MJPG video at {out}.")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 95)
    try:
        for i in idx:
            # What a camera sees: if the model wants inverted input, the real scene is the inverse.
            scene = 255 - images[i] if spec.invert else images[i]
            big = cv2.resize(scene, (side, side), interpolation=cv2.INTER_NEAREST)
            frame = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
            for _ in range(hold):
                writer.write(frame)
    finally:
        writer.release()
    return Conveyor(out, images[idx], labels[idx], hold)
