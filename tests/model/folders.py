"""Small image folders the model tests make for themselves: coloured shapes, one class subfolder per shape."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {"circle": (40, 40, 220), "square": (40, 200, 40), "triangle": (220, 80, 40)}  # BGR


def shapes_folder(root: Path, per_class: int = 8, seed: int = 0, sizes: tuple[tuple[int, int], ...] = ((40, 60),
                  (60, 40))) -> Path:
    """``root/<shape>/NN.png``: a coloured shape on a noisy background, images alternating between ``sizes``
    (h, w), non-square by default."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            _draw(img, shape, rng)
            cv2.imwrite(str(root / shape / f"{i:02d}.png"), img)
    return root


def _draw(img: np.ndarray, shape: str, rng: np.random.Generator) -> None:
    h, w = img.shape[:2]
    r = int(min(h, w) * rng.uniform(0.25, 0.35))
    cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
    colour = COLOURS[shape]
    if shape == "circle":
        cv2.circle(img, (cx, cy), r, colour, -1)
    elif shape == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
    else:
        cv2.fillPoly(img, [np.array([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], np.int32)], colour)
