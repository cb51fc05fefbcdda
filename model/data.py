"""Datasets as uint8 numpy arrays (N, H, W, C) with deterministic splits. No TensorFlow here, so
``vigil model evaluate`` can load the test set in a process that never imports it."""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from common.bundle import InputSpec
from common.errors import DataError
from common.images import IMAGE_SUFFIXES, image_files, read_image
from common.preprocess import preprocess

FASHION_LABELS = [
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]
FASHION_DIRS = [Path("/usr/share/datasets/fashion-mnist"), Path.home() / ".keras" / "datasets" / "fashion-mnist"]
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# The input of the shipped Fashion-MNIST bundle (bundles/fashion-mnist/spec.json): the idx files are 28x28 gray.
# center_crop: for its square 28x28 images the same as stretch, and a 4:3 or 16:9 camera frame is not squashed
# (on a 640x480 belt conveyor the shipped bundle scored 0.83 with center_crop, 0.66 with stretch:
# benchmarks/README.md, `vigil bench conveyor`)
FASHION_SPEC = InputSpec(height=28, width=28, channels=1, color="gray", resize="center_crop")
# An image folder's input unless --size/--color/--resize say otherwise: a centre crop, so that a 4:3 or 16:9
# camera frame served to the model is cut to its aspect, never squashed.
FOLDER_SPEC = InputSpec(height=96, width=96, channels=3, color="rgb", resize="center_crop")
LOAD_CHUNK = 256  # images per thread task: 50,000 of them make ~200 tasks, not 50,000 futures


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # uint8 (N, H, W, C)
    y: np.ndarray  # int64 (N,)

    def head(self, n: int | None) -> Split:
        return self if n is None else Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class Dataset:
    """Splits of images prepared for ``spec``, the model input they were made for (and its bundle's input)."""

    name: str
    labels: list[str]
    train: Split
    val: Split
    test: Split
    spec: InputSpec
    # How the splits were made (data, test_data, seed): recorded in a run's config.json, so that a command that
    # takes the run's model re-makes the same splits and never scores or fine-tunes on its training images.
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for which, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            if tuple(split.x.shape[1:]) != self.spec.shape:
                raise DataError(f"dataset {self.name}: {which} images are {split.x.shape[1:]}, but its input spec "
                                f"says {self.spec.shape}.")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.shape


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
    test = load_fashion_split("test", path)
    return Dataset("fashion-mnist", list(FASHION_LABELS), train, val, test, FASHION_SPEC,
                   {"data": "fashion-mnist", "seed": seed})


def load_image_folder(root: Path, spec: InputSpec = FOLDER_SPEC, val_fraction: float = 0.1,
                      test_fraction: float = 0.1, seed: int = 0, *, test_root: Path | None = None) -> Dataset:
    """One subfolder per class, every image prepared as a producer prepares a frame:
    ``preprocess(read_image(path), spec)``. Seeded splits (not stratified): test and val from ``root``, or, with
    ``test_root`` (CIFAR-style train/ and test/ folders, the same class subfolders), test is all of
    ``test_root`` and val is split from ``root``."""
    classes = class_folders(root, "--data")
    full = load_class_images(root, classes, spec)
    if test_root is None:
        rest, test = split_train_val(full, test_fraction, seed)
        train, val = split_train_val(rest, val_fraction / (1 - test_fraction), seed + 1)
        return Dataset(root.name, classes, train, val, test, spec, {"data": str(root), "seed": seed})
    if (test_classes := class_folders(test_root, "--test-data")) != classes:
        raise DataError(f"--test-data {test_root} has class folders {', '.join(test_classes)}, but --data {root} has "
                        f"{', '.join(classes)}: both need the same class subfolders.")
    test = load_class_images(test_root, classes, spec)
    train, val = split_train_val(full, val_fraction, seed)
    name = root.parent.name if root.parent == test_root.parent else root.name  # cifar-10/{train,test}: cifar-10
    return Dataset(name, classes, train, val, test, spec,
                   {"data": str(root), "test_data": str(test_root), "seed": seed})


def class_folders(root: Path, option: str) -> list[str]:
    """The class subfolders of ``root``, sorted; hidden ones (.ipynb_checkpoints, .git) are not classes."""
    if not root.is_dir():
        raise DataError(f"{option} {root}: no such directory. Pass fashion-mnist, or a folder with one subfolder "
                        "per class.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{root} must hold one subfolder per class (at least two) with images inside.")
    return classes



def load_class_images(root: Path, classes: list[str], spec: InputSpec) -> Split:
    """Every image of ``root/<class>/``, class by class in name order, as ``preprocess(read_image(f), spec)``.
    Decoding and resizing release the GIL, so threads use every core; a progress bar shows on a terminal."""
    files = [(f, idx) for idx, name in enumerate(classes) for f in image_files(root / name)]
    if empty := sorted(set(classes) - {classes[idx] for _, idx in files}):  # a class it could never learn
        raise DataError(f"{root}: class folder(s) {', '.join(empty)} hold no images "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))}). Add some, or remove the folder(s).")
    x = np.empty((len(files), *spec.shape), np.uint8)

    def prepare(start: int) -> int:
        chunk = files[start:start + LOAD_CHUNK]
        for i, (f, _) in enumerate(chunk, start):
            x[i] = preprocess(read_image(f), spec)
        return len(chunk)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool, _progress(f"{root}", len(files)) as advance:
        for done in pool.map(prepare, range(0, len(files), LOAD_CHUNK)):
            advance(done)
    return Split(x, np.asarray([idx for _, idx in files], dtype=np.int64))


@contextmanager
def _progress(what: str, total: int) -> Iterator[Callable[[int], None]]:
    console = Console(stderr=True)
    with Progress(TextColumn("reading {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def load_dataset(data: str, path: Path | None = None, spec: InputSpec | None = None, *,
                 test_data: Path | None = None, seed: int = 0) -> Dataset:
    """``fashion-mnist`` (its own 28x28 gray spec; ``spec``, when given, must be it) or an image folder
    prepared for ``spec`` (default ``FOLDER_SPEC``), with an optional separate test folder."""
    if data == "fashion-mnist":
        if spec not in (None, FASHION_SPEC) or test_data is not None:
            raise DataError("--data fashion-mnist is 28x28 gray with its own test set; an input spec or a test "
                            "folder is for image folders.")
        return load_fashion_mnist(path, seed=seed)
    return load_image_folder(Path(data), spec or FOLDER_SPEC, seed=seed, test_root=test_data)


def folder_spec(size: tuple[int, int] | None = None, color: str | None = None, resize: str | None = None,
                base: InputSpec = FOLDER_SPEC) -> InputSpec:
    """``base`` with another size ``(h, w)``, colour (gray: one channel, rgb: three) or resize mode."""
    h, w = size or (base.height, base.width)
    color = color or base.color
    return InputSpec.model_validate({**base.model_dump(), "height": h, "width": w, "color": color,
                                     "channels": 1 if color == "gray" else 3, "resize": resize or base.resize})
