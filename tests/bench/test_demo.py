import json
import subprocess
import sys

import pytest

from common.bundle import Bundle
from tests.helpers import REPO, TINY_BUNDLE
from vigil_bench.conveyor import FASHION_DIR, build_conveyor

SHIPPED = REPO / "bundles" / "fashion-mnist"
needs_data = pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST idx files not installed")


@needs_data
def test_conveyor_video_has_known_labels(tmp_path) -> None:

    conveyor = build_conveyor(tmp_path / "c.avi", Bundle.load(TINY_BUNDLE).spec.input, items=12, hold=3)
    assert conveyor.frames == 36 and conveyor.path.stat().st_size > 0
    assert conveyor.label_of_frame(5) == conveyor.labels[1]


@needs_data
@pytest.mark.integration
@pytest.mark.skipif(not (SHIPPED / "spec.json").is_file(), reason="no shipped bundle yet")
def test_demo_accuracy_matches_offline_and_every_frame_has_one_result(redis_url) -> None:
    out = subprocess.run([sys.executable, "-m", "common.cli", "--redis-url", redis_url, "demo", "--items", "500",
                          "--hold", "2", "-n", "2", "--json"], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    report = json.loads(out)
    assert report["frames"] == report["results"] == 1000
    assert report["duplicates"] == 0
    assert abs(report["accuracy_e2e"] - report["accuracy_offline"]) <= 0.005 + 1e-9
