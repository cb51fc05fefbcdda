"""Prometheus metrics: batch observation equals per-value observation; `vigil work --metrics-port` serves the
sum over its worker processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from common.embedded import free_port
from common.metrics import LATENCY_BUCKETS, observe_many
from tests.helpers import VIGIL, start_workers, wait_ready
from vigil_results.reader import read_results


def _samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for fam in registry.collect() for s in fam.samples
            if not s.name.endswith("_created")]


def test_observe_many_equals_observe_per_value() -> None:
    values = [0.0, 0.005, 0.0051, 0.1, 0.1, 0.42, 5.0, 9.5, 0.03]  # on, just past, beyond the bounds
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("lat", "x", ["source"], buckets=LATENCY_BUCKETS, registry=one)
    h2 = Histogram("lat", "x", ["source"], buckets=LATENCY_BUCKETS, registry=many)
    for v in values:
        h1.labels("cam").observe(v)
    observe_many(h2.labels("cam"), np.array(values))
    observe_many(h2.labels("cam"), np.array([]))
    assert _samples(one) == _samples(many)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.mark.slow
@pytest.mark.integration
def test_work_serves_metrics_summed_over_two_processes(pipeline_env, client, namespace, small_video) -> None:
    port = free_port()
    proc = start_workers(pipeline_env, "--metrics-port", str(port))
    try:
        wait_ready(client, namespace, 2)
        # at camera pace (2.4 s) both idle processes wait on the stream and the server hands frames to each
        subprocess.run([*VIGIL, "produce", "file", str(small_video), "--source", "cam", "--no-progress",
                        "--realtime"], env=pipeline_env, check=True, capture_output=True, timeout=60)
        cam = (("source", "cam"),)
        deadline = time.monotonic() + 30
        settled = {("vigil_worker_results_out_total", cam): 60, ("vigil_stream_lag", cam): 0,
                   ("vigil_stream_pending", cam): 0}  # the supervisor refreshes lag/pending every 5 s
        while any((got := scrape(port)).get(k) != v for k, v in settled.items()):
            assert time.monotonic() < deadline, got
            time.sleep(0.2)
        workers = {r.worker for r in read_results(client, namespace, "cam")}
        assert len(workers) == 2  # the sum spans 2 processes
        os.kill(int(workers.pop().rsplit(":", 1)[1]), signal.SIGKILL)
        time.sleep(1.0)  # the supervisor reaps it (and respawns after 0.5 s)
        assert scrape(port)[("vigil_worker_results_out_total", cam)] == 60  # a dead child's counts stay
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert got[("vigil_worker_results_out_total", cam)] == 60
    assert got[("vigil_worker_frames_in_total", cam)] == 61  # + the end-of-stream entry
    assert got[("vigil_capture_to_result_seconds_count", cam)] == 60
    assert got[("vigil_worker_batch_size_sum", ())] == 60


@pytest.mark.integration
def test_busy_metrics_port_is_reported_not_a_traceback(pipeline_env) -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        out = subprocess.run([*VIGIL, "work", "-n", "1", "--metrics-port", str(sock.getsockname()[1])],
                             env=pipeline_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Pick a free --metrics-port" in out.stderr, out.stderr
