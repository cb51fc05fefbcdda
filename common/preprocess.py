"""Turn a decoded BGR (or gray) image into exactly what the bundle's ``InputSpec`` asks for.

Order: crop -> resize -> colour -> invert -> pad. Resizing first makes colour conversion act on the small
image (both are linear, so the result matches to rounding), and large shrinks take OpenCV's integer-factor
INTER_AREA fast path first: 1280x720 -> 28x28 costs ~0.7 ms instead of ~2.7 ms on one core.
"""

from __future__ import annotations

import cv2
import numpy as np

from common.bundle import InputSpec


def preprocess(img: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Returns the (H, W, C) uint8 array the model takes (stretch, letterbox or center crop)."""
    if spec.resize == "center_crop":
        img = _center_crop(img, spec.width / spec.height)
    if spec.resize == "letterbox":
        h, w = img.shape[:2]
        scale = min(spec.width / w, spec.height / h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
    else:
        size = (spec.width, spec.height)
    out = _convert_color(resize_area(img, *size), spec)
    if spec.invert:
        out = 255 - out
    if spec.resize == "letterbox":
        out = _pad(out, spec.width, spec.height)
    return out.reshape(spec.height, spec.width, spec.channels)


def resize_area(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel-area resize; a shrink by k >= 2 first averages whole k x k blocks (OpenCV's fast path)."""
    h, w = img.shape[:2]
    k = min(h // height, w // width)
    if k >= 2:
        y0, x0 = (h % k) // 2, (w % k) // 2
        img = img[y0:y0 + h - h % k, x0:x0 + w - w % k]
        img = cv2.resize(img, (img.shape[1] // k, img.shape[0] // k), interpolation=cv2.INTER_AREA)
        if img.shape[:2] == (height, width):
            return img
    shrinking = img.shape[0] > height or img.shape[1] > width
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _convert_color(img: np.ndarray, spec: InputSpec) -> np.ndarray:
    gray = img.ndim == 2 or img.shape[2] == 1
    if spec.color == "gray":
        return img.reshape(img.shape[0], img.shape[1]) if gray else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if gray:
        img = cv2.cvtColor(img.reshape(img.shape[0], img.shape[1]), cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if spec.color == "rgb" else img


def _center_crop(img: np.ndarray, aspect: float) -> np.ndarray:
    h, w = img.shape[:2]
    if w / h > aspect:
        new_w = max(1, round(h * aspect))
        x0 = (w - new_w) // 2
        return img[:, x0:x0 + new_w]
    new_h = max(1, round(w / aspect))
    y0 = (h - new_h) // 2
    return img[y0:y0 + new_h]


def _pad(img: np.ndarray, width: int, height: int) -> np.ndarray:
    canvas = np.zeros((height, width, *img.shape[2:]), dtype=img.dtype)
    y0, x0 = (height - img.shape[0]) // 2, (width - img.shape[1]) // 2
    canvas[y0:y0 + img.shape[0], x0:x0 + img.shape[1]] = img
    return canvas
