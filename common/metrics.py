"""Prometheus metrics of producers and workers: one place for their names, labels and buckets.

A worker pool runs in prometheus_client's multiprocess mode: the supervisor calls ``prepare_multiprocess()``
before it spawns children (they inherit ``PROMETHEUS_MULTIPROC_DIR``) and ``serve(port, multiprocess=True)``
to expose the sum over its children. A camera producer is one process and serves its own registry.

Metric objects are created lazily (``metrics()``), after the environment is set, because multiprocess mode is
decided when a metric is created.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cache
from typing import Final

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
LIVESUM: Final = "livesum"  # gauges: sum over live processes (ignored outside multiprocess mode)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Metrics:
    # producers
    frames_captured: Counter  # source
    frames_produced: Counter  # source
    frames_dropped: Counter  # source, reason: superseded | trimmed | stale | dead
    reconnects: Counter  # source
    camera_online: Gauge  # source; 1 online, 0 otherwise
    # workers
    frames_in: Counter  # source; entries read by workers
    results_out: Counter  # source
    dead_letters: Counter  # source
    batch_size: Histogram
    inference_seconds: Histogram
    capture_to_result_seconds: Histogram  # source
    # broker view (status poller)
    lag: Gauge  # source
    pending: Gauge  # source


@cache
def metrics() -> Metrics:
    return Metrics(
        frames_captured=Counter("vigil_frames_captured", "Frames decoded from a camera.", ["source"]),
        frames_produced=Counter("vigil_frames_produced", "Frames added to a source's stream.", ["source"]),
        frames_dropped=Counter("vigil_frames_dropped", "Frames dropped, by reason.", ["source", "reason"]),
        reconnects=Counter("vigil_camera_reconnects", "Camera reconnect attempts.", ["source"]),
        camera_online=Gauge("vigil_camera_online", "1 while a camera delivers frames.", ["source"],
                            multiprocess_mode=LIVESUM),
        frames_in=Counter("vigil_worker_frames_in", "Stream entries read by workers.", ["source"]),
        results_out=Counter("vigil_worker_results_out", "Results written (and acked).", ["source"]),
        dead_letters=Counter("vigil_worker_dead_letters", "Entries dead-lettered.", ["source"]),
        batch_size=Histogram("vigil_worker_batch_size", "Frames per inference batch.", buckets=BATCH_BUCKETS),
        inference_seconds=Histogram("vigil_worker_inference_seconds", "Model time per batch.",
                                    buckets=LATENCY_BUCKETS),
        capture_to_result_seconds=Histogram("vigil_capture_to_result_seconds",
                                            "Capture (live) or production (file) to result written.",
                                            ["source"], buckets=LATENCY_BUCKETS),
        lag=Gauge("vigil_stream_lag", "Entries not yet delivered to the worker group.", ["source"],
                  multiprocess_mode=LIVESUM),
        pending=Gauge("vigil_stream_pending", "Entries delivered but not acked.", ["source"],
                      multiprocess_mode=LIVESUM),
    )


def prepare_multiprocess() -> str:
    """Point this process and the children it spawns at a fresh metrics directory; returns it."""
    path = tempfile.mkdtemp(prefix="vigil-metrics-")
    os.environ[MULTIPROC_ENV] = path
    # prometheus_client picks its value class when it is first imported (values.ValueClass), which in the
    # supervisor happened before this call; pick again so the supervisor's own gauges land in the directory too.
    from prometheus_client import values

    values.ValueClass = values.get_value_class()
    return path


def cleanup_multiprocess(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def serve(port: int, multiprocess: bool = False) -> int:
    """Expose /metrics on ``port`` (0 picks a free one) from a background thread; returns the port."""
    if multiprocess:
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
        server, _thread = start_http_server(port, addr="0.0.0.0", registry=registry)
    else:
        server, _thread = start_http_server(port, addr="0.0.0.0")
    return int(server.server_address[1])


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every value, at the cost of one update per touched bucket.

    In multiprocess mode each ``observe()`` takes a lock and writes two mmapped values (~3 µs); a worker
    records one latency per frame at thousands of frames/s, so it counts a batch's values per bucket first.
    Relies on prometheus_client's Histogram internals (``_upper_bounds``, ``_buckets``, ``_sum``, stable
    since 0.4); tests/workers/test_metrics.py checks the result equals per-value ``observe()``.
    """
    if not len(values):
        return
    bounds = histogram._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))  # like observe()
    for index in np.flatnonzero(counts):
        histogram._buckets[index].inc(int(counts[index]))
    histogram._sum.inc(float(values.sum()))
