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


def _circle_frame(height: int, width: int) -> np.ndarray:
    """A gray frame (100) with a white disc at its centre and a white square in each corner."""
    import cv2

    img = np.full((height, width, 3), 100, np.uint8)
    cv2.circle(img, (width // 2, height // 2), round(0.35 * height), (255, 255, 255), -1, cv2.LINE_AA)
    m = height // 8
    for y, x in ((0, 0), (0, width - m), (height - m, 0), (height - m, width - m)):
        img[y:y + m, x:x + m] = 255
    return img


def _disc_size(out: np.ndarray) -> tuple[int, int]:
    """(width, height) of the bright blob at the centre of ``out``, edges cut at the disc/background midpoint."""
    import cv2

    mask = (out[..., 0] > 177).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    blob = labels[out.shape[0] // 2, out.shape[1] // 2]
    return int(stats[blob, cv2.CC_STAT_WIDTH]), int(stats[blob, cv2.CC_STAT_HEIGHT])


FRAMES = {"4:3": (480, 640), "16:9": (360, 640)}
INPUTS = {"square": (64, 64), "wide": (48, 80)}


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("model_input", INPUTS)
def test_center_crop_keeps_a_circle_round(frame: str, model_input: str) -> None:
    """A frame of another aspect than the model input is cut to that aspect, not squashed: the disc stays round
    (width and height within a pixel) and no bar is added."""
    spec = InputSpec(height=INPUTS[model_input][0], width=INPUTS[model_input][1], channels=3, color="bgr",
                     resize="center_crop")
    out = preprocess(_circle_frame(*FRAMES[frame]), spec)
    w, h = _disc_size(out)
    assert abs(w - h) <= 1, (w, h)
    assert out.min() >= 90  # nothing but the frame: gray background, white disc


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("model_input", INPUTS)
def test_letterbox_keeps_the_whole_frame_undistorted_between_bars(frame: str, model_input: str) -> None:
    """The whole frame fits the model input at its own aspect: the disc stays round, the four corner squares
    are all visible, and what is left over is bars of zeros."""
    (fh, fw), (ih, iw) = FRAMES[frame], INPUTS[model_input]
    spec = InputSpec(height=ih, width=iw, channels=3, color="bgr", resize="letterbox")
    out = preprocess(_circle_frame(fh, fw), spec)
    w, h = _disc_size(out)
    assert abs(w - h) <= 1, (w, h)
    rows, cols = np.flatnonzero(out.max(axis=(1, 2))), np.flatnonzero(out.max(axis=(0, 2)))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    assert abs((right - left) / (bottom - top) - fw / fh) < 0.05  # the frame's own aspect
    bars = (top, ih - bottom, left, iw - right)
    assert sum(bars) > 0 and abs(bars[0] - bars[1]) <= 1 and abs(bars[2] - bars[3]) <= 1  # centred
    for y, x in ((top, left), (top, right - 1), (bottom - 1, left), (bottom - 1, right - 1)):
        assert out[y, x, 0] > 177, (y, x)  # each corner square made it in
    assert not out[:top].any() and not out[bottom:].any() and not out[:, :left].any() and not out[:, right:].any()


@pytest.mark.parametrize("frame", FRAMES)
def test_stretch_distorts_a_frame_of_another_aspect(frame: str) -> None:
    """Stretch maps the whole frame onto the input, whatever its aspect: the disc comes out an ellipse."""
    spec = InputSpec(height=64, width=64, channels=3, color="bgr", resize="stretch")
    w, h = _disc_size(preprocess(_circle_frame(*FRAMES[frame]), spec))
    fh, fw = FRAMES[frame]
    assert abs(w / h - fh / fw) < 0.1 and h - w > 5, (w, h)
