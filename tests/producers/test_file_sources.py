import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.bundle import InputSpec
from common.errors import SourceError
from common.preprocess import preprocess
from producers.files.sources import Sampling, estimate_frames, iter_frames, iter_preprocessed, prefetch


def test_every_nth_frame(small_video: Path) -> None:
    assert len(list(iter_frames(small_video, Sampling(every=4)))) == 15
    assert estimate_frames(small_video, Sampling(every=4)) == 15


def test_target_fps_in_media_time(small_video: Path) -> None:
    ts = [t for t, _ in iter_frames(small_video, Sampling(fps=5))]
    assert len(ts) == 12
    assert ts[1] == pytest.approx(0.2)


def test_image_folder_in_name_order(image_folder: Path) -> None:
    frames = list(iter_frames(image_folder, Sampling()))
    assert [t for t, _ in frames] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.mp4"):
        list(iter_frames(tmp_path / "nope.mp4", Sampling()))


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SourceError, match=r"broken\.png cannot be read"):
        list(iter_frames(tmp_path, Sampling()))


def test_8_and_16_bit_images_give_8_bit_frames(tmp_path: Path) -> None:
    deep = np.arange(40 * 30 * 3, dtype=np.uint16).reshape(40, 30, 3) * 50
    cv2.imwrite(str(tmp_path / "a.png"), deep)
    cv2.imwrite(str(tmp_path / "b.png"), np.full((40, 30, 3), 7, np.uint8))
    frames = [img for _, img in iter_frames(tmp_path, Sampling())]
    assert [img.dtype for img in frames] == [np.uint8, np.uint8]
    assert np.array_equal(frames[0], (deep >> 8).astype(np.uint8))
    spec = InputSpec(height=8, width=8, channels=3, color="rgb")
    assert {pixels.dtype for _, pixels in iter_preprocessed(tmp_path, Sampling(), spec)} == {np.dtype(np.uint8)}


def jpeg_with_orientation(img: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``img`` with an EXIF APP1 segment holding only the Orientation tag (cv2.imwrite writes none)."""
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    ifd = struct.pack(">HHHIHHI", 1, 0x0112, 3, 1, orientation, 0, 0)  # one SHORT entry, then no next IFD
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    return buf[:2].tobytes() + app1 + buf[2:].tobytes()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, :30] = 255  # left half white: rotated 90° clockwise (Orientation=6), the top half is white
    (tmp_path / "phone.jpg").write_bytes(jpeg_with_orientation(img, 6))
    [(_, frame)] = iter_frames(tmp_path, Sampling())
    assert frame.shape == (60, 20, 3)
    assert frame[:25].mean() > 200 and frame[35:].mean() < 50


def test_gray_and_alpha_images_read_as_bgr(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    bgra = rng.integers(0, 256, (40, 30, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a-gray.png"), gray)
    cv2.imwrite(str(tmp_path / "b-alpha.png"), bgra)
    (_, from_gray), (_, from_bgra) = iter_frames(tmp_path, Sampling())
    assert np.array_equal(from_gray, cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    assert np.array_equal(from_bgra, bgra[:, :, :3])
    spec = InputSpec(height=28, width=28, channels=1, color="gray")
    first = next(iter_preprocessed(tmp_path, Sampling(), spec))[1]
    assert first is not None and np.array_equal(first, preprocess(gray, spec))


def test_prefetch_reraises_any_error_of_the_decode_thread() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise RuntimeError("decoder crashed")

    seen: list[object] = []

    def consume() -> None:
        try:
            seen.extend(prefetch(failing()))
        except RuntimeError as exc:
            seen.append(exc)

    consumer = threading.Thread(target=consume, daemon=True)  # a regression blocks it, not the test run
    consumer.start()
    consumer.join(3.0)
    assert not consumer.is_alive(), "the consumer is still waiting for the dead decode thread"
    assert seen[0] == 1 and isinstance(seen[1], RuntimeError) and str(seen[1]) == "decoder crashed"


def test_hidden_files_are_not_frames(tmp_path: Path) -> None:
    """Training skips hidden files (``.DS_Store``, macOS ``._x.jpg``); so does the producer, or the frame seqs of
    a folder would not be its training images' positions (and an AppleDouble file would fail the run)."""
    cv2.imwrite(str(tmp_path / "x.png"), np.full((8, 8, 3), 50, np.uint8))
    cv2.imwrite(str(tmp_path / ".y.png"), np.full((8, 8, 3), 90, np.uint8))
    (tmp_path / "._z.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert [int(img.mean()) for _, img in iter_frames(tmp_path, Sampling())] == [50]
