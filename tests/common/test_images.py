from pathlib import Path

import cv2
import numpy as np
import pytest

from common.errors import DataError
from common.images import read_image


def test_any_image_reads_as_8_bit_bgr(tmp_path: Path) -> None:
    """Gray, 16-bit and alpha files all come back (H, W, 3) uint8, as a video's frames do."""
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((5, 7), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((5, 7, 3), 50_000, np.uint16))
    cv2.imwrite(str(tmp_path / "alpha.png"), np.full((5, 7, 4), 90, np.uint8))
    for name in ("gray.png", "deep.png", "alpha.png"):
        img = read_image(tmp_path / name)
        assert img.shape == (5, 7, 3) and img.dtype == np.uint8, name


def test_an_unreadable_file_is_a_data_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg cannot be read"):
        read_image(tmp_path / "broken.jpg")
    with pytest.raises(DataError, match=r"missing\.png cannot be read"):
        read_image(tmp_path / "missing.png")
