from pathlib import Path

import pytest

from common.errors import SourceError
from producers.sources import Sampling, estimate_frames, iter_frames


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
