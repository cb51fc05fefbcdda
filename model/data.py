"""Datasets as uint8 numpy arrays (N, H, W, C) with deterministic splits. No TensorFlow here, so
``vigil model evaluate`` can load the test set in a process that never imports it."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import DataError

FASHION_LABELS = [
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]
FASHION_DIRS = [Path("/usr/share/datasets/fashion-mnist"), Path.home() / ".keras" / "datasets" / "fashion-mnist"]
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # uint8 (N, H, W, C)
    y: np.ndarray  # int64 (N,)

    def head(self, n: int | None) -> Split:
        return self if n is None else Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class Dataset:
    name: str
    labels: list[str]
    train: Split
    val: Split
    test: Split

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w, c = self.train.x.shape[1:]
        return (int(h), int(w), int(c))


def find_fashion_dir(path: Path | None = None) -> Path:
    candidates = [path] if path else FASHION_DIRS
    for d in candidates:
        if d is not None and all((d / f).is_file() for pair in FASHION_FILES.values() for f in pair):
            return d
    where = str(path) if path else " or ".join(str(d) for d in FASHION_DIRS)
    raise DataError(
        f"Fashion-MNIST idx files not found in {where}. Install them with "
        "`apt-get install dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist), "
        "or pass --data-path DIR holding train/t10k-*-ubyte.gz."
    )


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable gzip idx file ({exc}). Re-install the dataset.") from exc
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file.")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_split(which: str, path: Path | None = None) -> Split:
    d = find_fashion_dir(path)
    images, labels = (_read_idx(d / f) for f in FASHION_FILES[which])
    return Split(images[..., None].copy(), labels.astype(np.int64))


def split_train_val(split: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    order = np.random.default_rng(seed).permutation(len(split.y))
    n_val = round(len(order) * val_fraction)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return Split(split.x[train_idx], split.y[train_idx]), Split(split.x[val_idx], split.y[val_idx])


def load_fashion_mnist(path: Path | None = None, val_fraction: float = 1 / 12, seed: int = 0) -> Dataset:
    """60k train -> 55k train + 5k val (seeded), 10k official test."""
    train, val = split_train_val(load_fashion_split("train", path), val_fraction, seed)
    return Dataset("fashion-mnist", list(FASHION_LABELS), train, val, load_fashion_split("test", path))


def load_image_folder(root: Path, size: tuple[int, int], channels: int = 1, val_fraction: float = 0.1,
                      test_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """One subfolder per class; images are stretched to ``size`` (h, w). Split is seeded and stratified-free."""
    import cv2

    if not root.is_dir():
        raise DataError(f"--data {root}: no such directory. Pass fashion-mnist, or a folder with one subfolder per "
                        "class.")
    # Hidden folders (.ipynb_checkpoints, .git) are not classes.
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{root} must hold one subfolder per class (at least two) with images inside.")
    xs, ys = [], []
    for idx, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                xs.append(_read_image(f, size, channels, cv2))
                ys.append(idx)
    if not xs:
        raise DataError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in class folders.")
    seen = set(ys)
    if empty := [name for idx, name in enumerate(classes) if idx not in seen]:  # a class it could never learn
        raise DataError(f"{root}: class folder(s) {', '.join(empty)} hold no images "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))}). Add some, or remove the folder(s).")
    full = Split(np.stack(xs), np.asarray(ys, dtype=np.int64))
    rest, test = split_train_val(full, test_fraction, seed)
    train, val = split_train_val(rest, val_fraction / (1 - test_fraction), seed + 1)
    return Dataset(root.name, classes, train, val, test)


def _read_image(path: Path, size: tuple[int, int], channels: int, cv2: object) -> np.ndarray:
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR  # type: ignore[attr-defined]
    img = cv2.imread(str(path), flag)  # type: ignore[attr-defined]
    if img is None:
        raise DataError(f"{path} cannot be decoded as an image.")
    img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)  # type: ignore[attr-defined]
    if channels == 3:
        img = img[..., ::-1]  # BGR -> RGB
    return img.reshape(size[0], size[1], channels)


def load_dataset(data: str, path: Path | None = None, size: tuple[int, int] = (28, 28), channels: int = 1,
                 seed: int = 0) -> Dataset:
    if data == "fashion-mnist":
        return load_fashion_mnist(path, seed=seed)
    return load_image_folder(Path(data), size, channels, seed=seed)
