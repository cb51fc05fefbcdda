"""`vigil bench live` end to end, short: real MJPEG and RTSP servers, the camera producer, a worker pool.

Latency targets are not asserted here (timing on a shared CI machine is not a test); the accounting is: every
frame a camera produced is processed or dropped for a counted reason, in both scenarios."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import TINY_BUNDLE

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_bench_live_accounts_for_every_frame(pipeline_env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "common.cli", "bench", "live", "--bundle", str(TINY_BUNDLE), "--cameras", "2",
           "--fps", "10", "--duration", "6", "--json"]
    out = subprocess.run(cmd, env=pipeline_env, capture_output=True, timeout=240)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    report = json.loads(out.stdout)
    assert report["capacity_fps"] > 0
    for name in ("normal", "overload"):
        r = report[name]
        assert set(r) >= {"p50_ms", "p99_ms", "produced", "processed", "dropped"}
        assert r["produced"] > 0 and r["drained"]
        assert r["accounting_exact"], r
        assert set(r["dropped"]) == {"trimmed", "stale", "dead"}
        assert r["produced"] == r["processed"] + sum(r["dropped"].values())
        assert r["captured"] >= r["produced"] + r["superseded"]
    assert report["overload"]["fps_per_camera"] > report["normal"]["fps_per_camera"]


def test_live_plot_draws_the_memory_trace(tmp_path) -> None:
    report = {"workers": 2, "memory_run": {"cameras": 4, "fps_per_camera": 25, "duration_s": 60},
              "memory_trace": {"t": [0, 5, 10], "producer": [90, 91, 91], "workers": [300, 300, 301],
                               "redis": [10, 11, 11]}}
    src, png = tmp_path / "live.json", tmp_path / "memory.png"
    src.write_text(json.dumps(report))
    cmd = [sys.executable, "-m", "common.cli", "bench", "live-plot", str(src), "-o", str(png)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    src.write_text(json.dumps({"normal": {}}))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "--memory-minutes" in out.stderr
