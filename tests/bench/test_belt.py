"""The camera conveyor's video: frames of the asked size, the item in the centre, a moving textured belt
around it, the same bytes from the same seed; and its item sources."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from common.bundle import Bundle
from common.errors import DataError
from tests.helpers import TINY_BUNDLE
from vigil_bench.belt import Belt, Codec, build_camera_conveyor, parse_size
from vigil_bench.conveyor import FASHION_DIR
from vigil_bench.photos import fashion_photos, folder_photos

needs_data = pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST idx files not installed")
LABELS = Bundle.load(TINY_BUNDLE, verify_hashes=False).labels


def photo(seed: int) -> np.ndarray:
    """A bright 32x32 colour photo: blocks of random colours, nothing like a dark belt."""
    blocks = np.random.default_rng(seed).integers(120, 256, (4, 4, 3), dtype=np.uint8)
    return cv2.resize(blocks, (32, 32), interpolation=cv2.INTER_NEAREST)


def make_folder(root: Path, classes: dict[str, int]) -> Path:
    for k, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(root / name / f"{i:04d}.png"), photo(100 * k + i))
    return root


def decode(video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1])
    cap.release()
    return frames


def test_frames_have_the_asked_size_the_item_centred_and_belt_around_it(tmp_path: Path) -> None:
    photos = folder_photos(make_folder(tmp_path / "photos", {"class3": 1, "class4": 1}), LABELS, items=1)
    built = build_camera_conveyor(tmp_path / "c.avi", photos, hold=2, size=(320, 240), item_fraction=0.875)
    frames = decode(built.path)
    assert len(frames) == built.frames == 2 and frames[0].shape == (240, 320, 3)
    side = 210  # 0.875 of 240
    y0, x0 = (240 - side) // 2, (320 - side) // 2
    item = cv2.resize(photos.images[0], (side, side), interpolation=cv2.INTER_NEAREST).astype(float)
    centre = frames[0][y0:y0 + side, x0:x0 + side].astype(float)
    inner = np.s_[8:-8, 8:-8]  # JPEG rings at the item's edge
    assert np.abs(centre[inner] - item[inner]).mean() < 8  # codec and sensor noise only
    border = frames[0][:, :x0 - 4].astype(float)
    assert 20 < border.mean() < 80  # a dark belt, not the bright photo
    assert border.std() > 4  # textured, not flat


def test_the_belt_moves_between_frames_and_the_video_is_deterministic(tmp_path: Path) -> None:
    photos = folder_photos(make_folder(tmp_path / "photos", {"class0": 1, "class5": 1}), LABELS, items=2)
    a = build_camera_conveyor(tmp_path / "a.avi", photos, hold=2, size=(320, 240), seed=3)
    b = build_camera_conveyor(tmp_path / "b.avi", photos, hold=2, size=(320, 240), seed=3)
    assert a.path.read_bytes() == b.path.read_bytes()
    f0, f1 = (f[:, :40].astype(float) for f in decode(a.path)[:2])
    speed = Belt(320, 240, seed=3).speed
    moved = np.abs(f1[:, speed:] - f0[:, :-speed]).mean()
    assert moved < np.abs(f1 - f0).mean() / 2  # frame 1's belt is frame 0's, shifted along the belt


@pytest.mark.parametrize("codec", list(Codec))
def test_both_codecs_write_every_frame_at_720p(tmp_path: Path, codec: Codec) -> None:
    photos = folder_photos(make_folder(tmp_path / "photos", {"class1": 1, "class6": 1}), LABELS, items=2)
    built = build_camera_conveyor(tmp_path / f"c{codec.suffix}", photos, hold=2, size=(1280, 720), codec=codec)
    frames = decode(built.path)
    assert len(frames) == 4 and frames[0].shape == (720, 1280, 3)


def test_folder_photos_take_their_labels_from_the_bundle_and_refuse_unknown_classes(tmp_path: Path) -> None:
    photos = folder_photos(make_folder(tmp_path / "ok", {"class2": 2, "class7": 3}), LABELS, items=10)
    assert sorted(photos.labels.tolist()) == [2, 2, 7, 7, 7] and not photos.matte
    with pytest.raises(DataError, match="cat"):
        folder_photos(make_folder(tmp_path / "bad", {"class2": 1, "cat": 1}), LABELS, items=10)


@needs_data
def test_matte_fashion_items_lie_on_the_belt_photos_keep_their_black_ground(tmp_path: Path) -> None:
    spec = Bundle.load(TINY_BUNDLE, verify_hashes=False).spec.input
    corners = {}
    for matte in (False, True):
        photos = fashion_photos(spec, items=1, matte=matte)
        built = build_camera_conveyor(tmp_path / f"{matte}.avi", photos, hold=1, size=(320, 240))
        y0, x0 = (240 - 210) // 2, (320 - 210) // 2
        corners[matte] = decode(built.path)[0][y0 + 4:y0 + 12, x0 + 4:x0 + 12].mean()  # the item's ground
    assert corners[False] < 12 < 25 < corners[True]


def test_parse_size_reads_width_x_height() -> None:
    assert parse_size("1280x720") == (1280, 720)
    for bad in ("640", "640x481", "8x8", "axb"):
        with pytest.raises(ValueError):
            parse_size(bad)
