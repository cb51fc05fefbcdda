"""A region of interest: the rectangle of each frame a producer keeps, as x, y, w, h in the frame's pixels,
cropped before anything else is done to the frame.

A camera clips its ROI to every frame (``crop``: a camera can change its resolution while it runs). A file is
checked once against its frame size and then cropped exactly (``check_fits``, ``cut``): a rectangle that does
not fit is a mistake in the flag, refused before anything is sent.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from common.bundle import InputSpec
from common.errors import ConfigError
from common.preprocess import preprocess

Roi = tuple[int, int, int, int]


def parse_roi(text: str) -> Roi:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise ValueError(f"{text!r} must be four integers x,y,w,h (pixels), e.g. 100,50,640,480")
    x, y, w, h = (int(p) for p in parts)
    return x, y, w, h


def format_roi(roi: Roi) -> str:
    return ",".join(str(v) for v in roi)


def crop(img: Any, roi: Roi | None) -> Any:
    """The ROI of ``img``, clipped to the image; the whole image when the ROI lies outside it."""
    if roi is None:
        return img
    x, y, w, h = roi
    out = img[y:y + h, x:x + w]
    return out if out.size else img


def check_fits(roi: Roi, width: int, height: int, what: str) -> None:
    """``ConfigError`` naming the ROI and the frame size unless the ROI lies inside a ``width`` x ``height``
    frame (``what`` names that frame, e.g. "the frames of clip.mp4")."""
    x, y, w, h = roi
    if w > 0 and h > 0 and x + w <= width and y + h <= height:
        return
    raise ConfigError(f"--roi {format_roi(roi)} (x,y,w,h) does not fit {what} ({width}x{height} pixels, "
                      f"w x h): it needs w, h > 0, x + w <= {width} and y + h <= {height}. Pass a region inside "
                      "the frame, or leave --roi out for the whole frame.")


def cut(img: np.ndarray, roi: Roi | None, what: str) -> np.ndarray:
    """Exactly the ROI of ``img`` (all of it for None); ``check_fits``'s error when it does not fit."""
    if roi is None:
        return img
    check_fits(roi, img.shape[1], img.shape[0], what)
    x, y, w, h = roi
    return img[y:y + h, x:x + w]


def prepare(img: np.ndarray, spec: InputSpec, roi: Roi | None, what: str) -> np.ndarray:
    """A file's decoded frame as the model takes it: ``cut`` to the ROI, then preprocessed to ``spec``."""
    return preprocess(cut(img, roi, what), spec)
