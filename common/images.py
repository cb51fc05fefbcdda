"""The one image reader: the file producer's frames and the training images come from the same decode, so a
model is trained on the pixels it is later served (then ``common.preprocess`` shapes both to the bundle's
``InputSpec``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from common.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}  # what OpenCV decodes


def read_image(path: Path) -> np.ndarray:
    """``path`` as 8-bit BGR (H, W, 3) like a video's frames, whatever the file holds (16-bit, gray, alpha),
    turned upright by its EXIF orientation (phone photos the right way up). ``DataError`` naming the file when
    it cannot be decoded."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"image {path} cannot be read (not an image, or damaged). Fix or remove it.")
    return img


def image_files(folder: Path) -> list[Path]:
    """The images of ``folder`` in name order, hidden files skipped (``.DS_Store``, macOS ``._x.jpg``): the one
    listing of a folder, so training, evaluation and the file producer see the same images in the same order."""
    return sorted(f for f in folder.iterdir()
                  if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file())
