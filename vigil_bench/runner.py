"""Run the real pipeline the way an operator would: `vigil work` and `vigil produce file` as subprocesses
against one broker, with a progress display. Used by `vigil demo` and `vigil bench pipeline`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from common.broker import connect
from common.errors import VigilError
from common.schemas import Result
from common.streams import SourceKeys, registry_key
from vigil_results.reader import dead_frames, read_dead, read_results

VIGIL = [sys.executable, "-m", "common.cli"]
READY_TIMEOUT_S = 60.0
STALL_S = 120.0  # feed gives up when no result arrives for this long


@dataclass
class RunStats:
    frames: int
    results: list[Result]
    dead: int
    wall_s: float  # producer launch -> last result, process start-up included
    stream_s: float  # producer opened the source (before its first decode) -> last result inferred (warm workers)
    worker_cpu_s: float = 0.0  # CPU the worker pool (all processes) spent during the run
    broker_cpu_s: float = 0.0
    producer_cpu_s: float = 0.0  # the producer process, start-up (imports) included
    harness_cpu_s: float = 0.0  # this process, watching the run (polls XLEN)
    # The part of producer_cpu_s spent before the producer opened the source (imports, settings): before the
    # window that ``stream_s`` times. None when it could not be read (the producer exited first).
    producer_startup_cpu_s: float | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.stream_s if self.stream_s > 0 else 0.0

    @property
    def wall_fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


class PipelineRun:
    """A warm worker pool in a namespace; ``feed`` pushes one file through it and waits for every result."""

    def __init__(self, url: str, namespace: str, bundle: Path, workers: int, threads: int = 1,
                 max_batch: int = 32) -> None:
        self.url, self.namespace, self.workers = url, namespace, workers
        self.env = {**os.environ, "REDIS_URL": url, "VIGIL_NAMESPACE": namespace, "VIGIL_BUNDLE": str(bundle),
                    "VIGIL_LOG_LEVEL": "WARNING", "VIGIL_THREADS_PER_WORKER": str(threads),
                    "VIGIL_MAX_BATCH": str(max_batch), "VIGIL_MAX_WAIT_MS": "5"}
        self.client: redis.Redis = connect(url)
        self.pool: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PipelineRun:
        self.pool = subprocess.Popen([*VIGIL, "work", "-n", str(self.workers)], env=self.env)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self._ready_workers() < self.workers:
            if time.monotonic() > deadline or self.pool.poll() is not None:
                raise VigilError(f"worker pool did not become ready within {READY_TIMEOUT_S}s")
            time.sleep(0.1)
        return self

    def _ready_workers(self) -> int:
        clients = self.client.client_list()
        return sum(1 for c in clients if c.get("name", "").startswith(f"{self.namespace}:worker:"))

    def feed(self, video: Path, source: str, frames: int, progress: bool, *extra: str) -> RunStats:
        keys = SourceKeys(self.namespace, source)
        self.client.delete(*keys.all())  # an earlier run's results must not count as this run's
        cpu0 = self._cpu()
        harness0 = time.process_time()
        started = time.monotonic()
        cmd = [*VIGIL, "produce", "file", str(video), "--source", source, "--no-progress", "--restart", *extra]
        producer = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL)
        startup_cpu = _startup_cpu(self.client, producer, keys)
        producer_cpu: float | None = None
        progress_at, last_done = time.monotonic(), -1
        with _bar(progress) as bar:
            produced = bar.add_task("produced", total=frames)
            classified = bar.add_task("classified", total=frames)
            while True:  # one round trip per look; the dead letters are read only when there are some
                pipe = self.client.pipeline(transaction=False)
                pipe.xlen(keys.results)
                pipe.xlen(keys.dead)
                pipe.hget(keys.meta, "produced")  # not XLEN of the frames: the producer trims processed entries
                n_results, n_dead, n_produced = (int(x or 0) for x in pipe.execute())
                done = n_results + (dead_frames(read_dead(self.client, self.namespace, source)) if n_dead else 0)
                if done >= frames + 1:
                    break
                if done != last_done:
                    progress_at, last_done = time.monotonic(), done
                elif time.monotonic() - progress_at > STALL_S:
                    if producer_cpu is None:
                        producer.kill()
                        producer.wait()
                    raise VigilError(f"{source}: no new result for {STALL_S:.0f} s ({done} of {frames} frames + the "
                                     "end of stream accounted for); the workers or the producer are stuck")
                if producer_cpu is None:
                    producer_cpu = _reap(producer)
                    if producer.returncode not in (None, 0):
                        raise VigilError(f"producer for {video} failed with exit code {producer.returncode}")
                bar.update(produced, completed=min(frames, n_produced))
                bar.update(classified, completed=n_results)
                time.sleep(0.05)
            bar.update(produced, completed=frames)
            bar.update(classified, completed=frames)
        wall = time.monotonic() - started
        worker_cpu, broker_cpu = (b - a for a, b in zip(cpu0, self._cpu(), strict=True))
        harness_cpu = time.process_time() - harness0
        deadline = time.monotonic() + 30
        while producer_cpu is None and time.monotonic() < deadline:
            producer_cpu = _reap(producer)
            time.sleep(0.01)
        if producer_cpu is None:
            producer.kill()
            producer.wait()
            raise VigilError(f"producer for {video} did not exit within 30 s of its last result")
        results = read_results(self.client, self.namespace, source)
        # From the producer's start (recorded after its imports, before it decodes the first frame): a window
        # that began at the first frame produced would leave out how long the first frames take to decode.
        opened = float(self.client.hget(keys.meta, "started_at") or 0.0)
        stream_s = max(r.inferred_at for r in results) - opened if results and opened else 0.0
        dead = dead_frames(read_dead(self.client, self.namespace, source))
        return RunStats(frames, results, dead, wall, stream_s, worker_cpu, broker_cpu, producer_cpu,
                        harness_cpu, startup_cpu)

    def forget(self, source: str) -> None:
        """Unregister a fed source, so that the pool stops polling it (its keys go at exit, with the namespace's;
        deleting them now would make a worker that still reads the stream warn that it lost its group)."""
        self.client.srem(registry_key(self.namespace), source)

    def _cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the worker pool (supervisor + children) and of the broker (INFO cpu)."""
        workers = 0.0
        if self.pool is not None:
            root = psutil.Process(self.pool.pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    t = proc.cpu_times()
                    workers += t.user + t.system
        info: Any = self.client.info("cpu")
        return workers, float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None and self.pool.poll() is None:
            self.pool.send_signal(signal.SIGTERM)
            try:
                self.pool.wait(30)
            except subprocess.TimeoutExpired:
                self.pool.kill()
                self.pool.wait()
        keys = list(self.client.scan_iter(match=f"{self.namespace}:*", count=1000))
        if keys:
            self.client.delete(*keys)
        self.client.close()


def _startup_cpu(client: redis.Redis, producer: subprocess.Popen[bytes], keys: SourceKeys) -> float | None:
    """The producer's CPU seconds when its source's meta hash first shows ``started_at`` (looked up every 5 ms:
    a few ms of its CPU late at most), or None if it exits or stalls first. Does not reap it."""
    proc = psutil.Process(producer.pid)
    deadline = time.monotonic() + READY_TIMEOUT_S
    with contextlib.suppress(psutil.Error):
        while time.monotonic() < deadline and proc.status() != psutil.STATUS_ZOMBIE:
            if client.hexists(keys.meta, "started_at"):
                times = proc.cpu_times()
                return times.user + times.system
            time.sleep(0.005)
    return None


def _reap(proc: subprocess.Popen[bytes]) -> float | None:
    """The CPU seconds (user + system) of ``proc`` once it has exited, reaping it (``os.wait4``: a plain
    ``wait`` loses its resource usage); None while it runs. Sets ``proc.returncode``."""
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def _bar(enabled: bool) -> Progress:
    columns = (TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, disable=not enabled, transient=False)
