"""Turn a decoded BGR (or gray) image into exactly what the bundle's ``InputSpec`` asks for."""

from __future__ import annotations

import cv2
import numpy as np

from common.bundle import InputSpec


def preprocess(img: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Colour conversion, inversion, then resize (stretch, letterbox or center crop); returns (H, W, C) uint8."""
    out = _convert_color(img, spec)
    if spec.invert:
        out = 255 - out
    if spec.resize == "center_crop":
        out = _center_crop(out, spec.width / spec.height)
    if spec.resize == "letterbox":
        out = _letterbox(out, spec.width, spec.height)
    else:
        out = _resize(out, spec.width, spec.height)
    return out.reshape(spec.height, spec.width, spec.channels)


def _convert_color(img: np.ndarray, spec: InputSpec) -> np.ndarray:
    gray = img.ndim == 2 or img.shape[2] == 1
    if spec.color == "gray":
        return img.reshape(img.shape[0], img.shape[1]) if gray else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if gray:
        img = cv2.cvtColor(img.reshape(img.shape[0], img.shape[1]), cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if spec.color == "rgb" else img


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    shrinking = img.shape[0] > height or img.shape[1] > width
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


def _center_crop(img: np.ndarray, aspect: float) -> np.ndarray:
    h, w = img.shape[:2]
    if w / h > aspect:
        new_w = max(1, round(h * aspect))
        x0 = (w - new_w) // 2
        return img[:, x0:x0 + new_w]
    new_h = max(1, round(w / aspect))
    y0 = (h - new_h) // 2
    return img[y0:y0 + new_h]


def _letterbox(img: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = min(width / w, height / h)
    inner = _resize(img, max(1, round(w * scale)), max(1, round(h * scale)))
    canvas = np.zeros((height, width, *img.shape[2:]), dtype=img.dtype)
    y0, x0 = (height - inner.shape[0]) // 2, (width - inner.shape[1]) // 2
    canvas[y0:y0 + inner.shape[0], x0:x0 + inner.shape[1]] = inner
    return canvas
