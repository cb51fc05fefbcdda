"""`vigil bench conveyor`: the real pipeline on a camera conveyor publishes exactly the labels the model gives
the decoded frames offline, and --resize serves a copy of the bundle with that mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from common.bundle import Bundle
from tests.bench.test_belt import make_folder
from tests.helpers import TINY_BUNDLE
from vigil_bench.conveyor import FASHION_DIR
from vigil_bench.conveyor_bench import bundle_with_resize

needs_data = pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST idx files not installed")


def bench(redis_url: str, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "common.cli", "--redis-url", redis_url, "bench", "conveyor", "--bundle",
           str(TINY_BUNDLE), "--hold", "2", "--frame-size", "320x240", "-n", "1", "--json", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    report: dict[str, Any] = json.loads(out)
    return report


def assert_transport_lost_nothing(report: dict[str, Any], frames: int) -> None:
    assert report["frames"] == report["results"] == report["decoded_frames"] == frames
    assert report["duplicates"] == report["dead_letters"] == 0
    assert report["labels_match_offline_frames"] == 1.0
    assert report["accuracy_e2e"] == report["accuracy_offline_frames"]


def test_resize_serves_a_copy_whose_spec_names_the_mode(tmp_path: Path) -> None:
    bundle = Bundle.load(TINY_BUNDLE)
    with bundle_with_resize(bundle, "center_crop", tmp_path) as copy:
        assert copy.root != bundle.root and copy.spec.input.resize == "center_crop"
        assert copy.version == bundle.version  # spec.json is not among the hashed files
    assert Bundle.load(TINY_BUNDLE).spec.input.resize == "stretch"
    with bundle_with_resize(bundle, "stretch", tmp_path) as same:
        assert same is bundle


@needs_data
@pytest.mark.slow
def test_fashion_conveyor_through_the_pipeline_gives_the_offline_labels_of_its_frames(redis_url: str) -> None:
    report = bench(redis_url, "--items", "12")
    assert_transport_lost_nothing(report, 24)
    assert report["resize"] == report["spec_resize"] == "stretch"
    assert report["frame_size"] == "320x240" and report["photos"] == "fashion-mnist"


@pytest.mark.slow
def test_folder_photos_in_mp4v_with_resize_override(redis_url: str, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "photos", {"class0": 3, "class5": 3})
    report = bench(redis_url, "--photos", str(folder), "--items", "6", "--codec", "mp4v",
                   "--resize", "center_crop")
    assert_transport_lost_nothing(report, 12)
    assert (report["resize"], report["spec_resize"]) == ("center_crop", "stretch")
