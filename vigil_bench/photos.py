"""The items a camera conveyor carries: labelled photos, each with the image a training run would have read.

Two sources: the Fashion-MNIST test set (28x28 gray garments on black, the shipped bundle's own test set) and
an image folder with one subfolder per class (CIFAR-10's ``test/<class>/*.jpg``), whose class names are the
bundle's labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.bundle import InputSpec
from common.errors import DataError
from common.images import read_image
from model.data import class_folders, image_files
from vigil_bench.conveyor import FASHION_DIR, load_test_set

FASHION = "fashion-mnist"


@dataclass(frozen=True)
class Photos:
    """``images[i]`` (uint8, gray (H, W) or BGR (H, W, 3)) is the scene a camera sees of item i, whose class is
    the bundle's label ``labels[i]``. ``matte``: the scene is an object on a black ground (white when
    ``spec.invert``), and on the belt the belt shows where the ground is; otherwise the whole photo is opaque."""

    name: str
    images: list[np.ndarray]
    labels: np.ndarray
    matte: bool
    ground: int = 0  # the scene value of a matte item's ground

    def __len__(self) -> int:
        return len(self.images)


def fashion_photos(spec: InputSpec, items: int, seed: int = 0, data_dir: Path = FASHION_DIR,
                   matte: bool = False) -> Photos:
    """``items`` random Fashion-MNIST test items (label index = the shipped bundle's label order): photos of
    garments on black, or with ``matte`` the garments themselves, lying on the belt."""
    images, labels = load_test_set(data_dir)
    idx = np.random.default_rng(seed).choice(len(images), size=min(items, len(images)), replace=False)
    # What a camera sees: if the model wants inverted input, the real scene is the inverse (as vigil demo's).
    scenes = [255 - images[i] if spec.invert else images[i] for i in idx]
    return Photos(FASHION, scenes, labels[idx].astype(np.int64), matte, ground=255 if spec.invert else 0)


def folder_photos(root: Path, labels: list[str], items: int, seed: int = 0) -> Photos:
    """``items`` random images of ``root/<class>/`` (all of them when fewer), read as training reads them.
    ``DataError`` when a class folder is not one of the bundle's ``labels``."""
    classes = class_folders(root, "--photos")
    if unknown := [c for c in classes if c not in labels]:
        raise DataError(f"--photos {root}: class folder(s) {', '.join(unknown)} are not labels of the bundle "
                        f"({', '.join(labels)}). Name each subfolder after the bundle label of its images.")
    files = [(f, labels.index(c)) for c in classes for f in image_files(root / c)]
    if not files:
        raise DataError(f"--photos {root}: its class folders hold no images.")
    idx = np.random.default_rng(seed).choice(len(files), size=min(items, len(files)), replace=False)
    chosen = [files[i] for i in idx]
    return Photos(str(root), [read_image(f) for f, _ in chosen], np.asarray([c for _, c in chosen], np.int64),
                  matte=False)
