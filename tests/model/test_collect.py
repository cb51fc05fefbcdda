"""`vigil model collect`: frames of a video, an image folder or a camera saved as training images."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.cli import main
from producers.files.sources import Sampling, iter_frames
from tests.helpers import mjpeg_camera


def collect(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["model", "collect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_frame_collector_writes_n_images_from_a_video(capsys, small_video: Path, tmp_path: Path) -> None:
    report = collect(capsys, str(small_video), "--out", str(tmp_path / "out"), "--every", "10")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [f"bikes-small-{i:06d}.png" for i in range(6)]  # 60 frames, every 10th
    assert report["written"] == 6 and report["kind"] == "video" and report["size"] == [160, 68]
    assert report["next"] == f"sort them into {tmp_path / 'out'}/<class>/ subfolders, then: vigil model train " \
                             f"--data {tmp_path / 'out'}"


def test_every_count_and_roi_are_respected(capsys, small_video: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    collect(capsys, str(small_video), "--out", str(out), "--every", "5", "--count", "4", "--roi", "10,5,64,48",
            "--format", "png")
    saved = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(out.iterdir())]
    frames = [img for _, img in iter_frames(small_video, Sampling(every=5))][:4]  # frames 0, 5, 10, 15
    assert [img.shape for img in saved] == [(48, 64, 3)] * 4
    assert all(np.array_equal(got, frame[5:53, 10:74]) for got, frame in zip(saved, frames, strict=True))


def test_a_non_empty_out_is_refused_unless_append_which_numbers_on(capsys, small_video: Path,
                                                                   tmp_path: Path) -> None:
    """Numbering continues after the highest of the folder, frames already sorted into a class included."""
    out = tmp_path / "out"
    collect(capsys, str(small_video), "--out", str(out), "--count", "3")
    (out / "bike").mkdir()
    (out / "bikes-small-000002.png").rename(out / "bike" / "bikes-small-000002.png")
    assert main(["model", "collect", str(small_video), "--out", str(out), "--count", "2"]) == 2
    assert f"--out {out} is not empty. Pass --append" in capsys.readouterr().err
    report = collect(capsys, str(small_video), "--out", str(out), "--count", "2", "--append")
    assert (report["first"], report["last"]) == ("bikes-small-000003.png", "bikes-small-000004.png")


def test_an_image_folder_is_collected_in_name_order(capsys, image_folder: Path, tmp_path: Path) -> None:
    report = collect(capsys, str(image_folder), "--out", str(tmp_path / "out"), "--name", "shots", "--every", "2")
    assert report["kind"] == "folder" and report["written"] == 3 and report["last"] == "shots-000002.png"


@pytest.mark.parametrize(("args", "said"), [
    (["--roi", "100,20,64,64"], "--roi 100,20,64,64 (x,y,w,h) does not fit the frames of"),
    (["--roi", "1,2,3"], "must be four integers x,y,w,h"),
    (["--every", "2", "--fps", "5"], "mutually exclusive"),
])
def test_bad_options_exit_2_and_write_nothing(capsys, small_video: Path, tmp_path: Path, args, said) -> None:
    assert main(["model", "collect", str(small_video), "--out", str(tmp_path / "out"), *args]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_source_that_is_nothing_known_exits_2(capsys, tmp_path: Path) -> None:
    assert main(["model", "collect", str(tmp_path / "gone.mp4"), "--out", str(tmp_path / "out")]) == 2
    assert "is neither a video file, an image folder nor a camera" in capsys.readouterr().err


@pytest.fixture
def http_camera() -> Iterator[int]:
    with mjpeg_camera(range(20, 140, 20)) as port:
        yield port


def test_a_camera_is_collected_until_count_and_named_after_its_host(capsys, http_camera: int,
                                                                    tmp_path: Path) -> None:
    url = f"http://admin:s3cret@127.0.0.1:{http_camera}/video"
    report = collect(capsys, url, "--out", str(tmp_path / "out"), "--count", "3", "--roi", "0,0,32,24")
    assert report["kind"] == "camera" and report["source"] == f"http://admin:***@127.0.0.1:{http_camera}/video"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"127.0.0.1-{i:06d}.png" for i in range(3)]
    assert report["size"] == [32, 24]


def test_a_camera_that_ends_keeps_what_it_wrote(capsys, http_camera: int, tmp_path: Path) -> None:
    """No reconnect: the stream's end ends the run (exit 0) with the frames it delivered."""
    url = f"http://admin:s3cret@127.0.0.1:{http_camera}/video"
    report = collect(capsys, url, "--out", str(tmp_path / "out"), "--every", "2")
    assert report["written"] == 3


def test_collect_never_imports_tensorflow(small_video: Path, tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "from common.cli import main\n"
        f"rc = main(['model', 'collect', {str(small_video)!r}, '--out', {str(tmp_path / 'out')!r}, '--count', '2'])\n"
        "print(json.dumps({'rc': rc, 'tf': 'tensorflow' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"rc": 0, "tf": False}
    assert "next: sort them into" in out
