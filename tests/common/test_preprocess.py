import numpy as np
import pytest

from common.bundle import InputSpec
from common.preprocess import preprocess


@pytest.mark.parametrize("resize", ["stretch", "letterbox", "center_crop"])
@pytest.mark.parametrize(("color", "channels"), [("gray", 1), ("rgb", 3), ("bgr", 3)])
def test_output_matches_spec(resize: str, color: str, channels: int) -> None:
    spec = InputSpec(height=28, width=32, channels=channels, color=color, resize=resize)  # type: ignore[arg-type]
    out = preprocess(np.zeros((720, 1280, 3), np.uint8), spec)
    assert out.shape == (28, 32, channels) and out.dtype == np.uint8


def test_invert_and_rgb_order() -> None:
    img = np.zeros((10, 10, 3), np.uint8)
    img[..., 2] = 200  # red in BGR
    out = preprocess(img, InputSpec(height=10, width=10, channels=3, color="rgb", invert=True))
    assert tuple(out[0, 0]) == (55, 255, 255)


def test_letterbox_pads_instead_of_stretching() -> None:
    out = preprocess(np.full((10, 40, 1), 255, np.uint8), InputSpec(height=40, width=40, channels=1))
    assert out.shape == (40, 40, 1)
    out = preprocess(np.full((10, 40), 255, np.uint8),
                     InputSpec(height=40, width=40, channels=1, resize="letterbox"))
    assert out[0, 0, 0] == 0 and out[20, 20, 0] == 255


def test_integer_shrink_is_exact_block_average() -> None:
    img = np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4) * 10, np.ones((8, 8), np.uint8))
    out = preprocess(img, InputSpec(height=4, width=4, channels=1))
    assert np.array_equal(out[..., 0], np.arange(16, dtype=np.uint8).reshape(4, 4) * 10)


def test_large_shrink_stays_close_to_plain_area_resize() -> None:
    import cv2

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (720, 1280), dtype=np.uint8), (0, 0), 20)
    ref = cv2.resize(img, (28, 28), interpolation=cv2.INTER_AREA).astype(int)
    out = preprocess(img, InputSpec(height=28, width=28, channels=1))[..., 0].astype(int)
    assert np.abs(out - ref).mean() < 2.0
