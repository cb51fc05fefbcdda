"""A region of interest: parsed from x,y,w,h, clipped for cameras, checked and cut exactly for files."""

import numpy as np
import pytest

from common.errors import ConfigError
from producers.roi import check_fits, crop, cut, parse_roi


def test_roi_parse_and_crop() -> None:
    img = np.arange(100 * 80).reshape(100, 80)
    assert crop(img, parse_roi("10, 20, 30, 40")).shape == (40, 30)
    assert crop(img, (70, 90, 50, 50)).shape == (10, 10)  # clipped at the border
    assert crop(img, (500, 500, 5, 5)).shape == (100, 80)  # outside: whole image
    with pytest.raises(ValueError, match="x,y,w,h"):
        parse_roi("1,2,3,x")


def test_cut_is_exact_and_refuses_a_region_outside_the_frame() -> None:
    img = np.arange(100 * 80).reshape(100, 80)
    assert np.array_equal(cut(img, (10, 20, 30, 40), "frame 0"), img[20:60, 10:40])
    assert cut(img, (0, 0, 80, 100), "frame 0").shape == (100, 80)  # the whole frame fits
    with pytest.raises(ConfigError, match=r"--roi 70,90,50,50 \(x,y,w,h\) does not fit frame 3 \(80x100 pixels"):
        cut(img, (70, 90, 50, 50), "frame 3")
    with pytest.raises(ConfigError, match="w, h > 0"):
        check_fits((0, 0, 0, 5), 80, 100, "the frames")
