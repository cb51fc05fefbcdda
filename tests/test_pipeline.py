"""End-to-end delivery semantics against a real server: producer -> stream -> worker pool -> results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from common.streams import GROUP, SourceKeys
from workers.results import read_dead, read_results

pytestmark = pytest.mark.integration
VIGIL = [sys.executable, "-m", "common.cli"]


def produce(env: dict[str, str], video: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIGIL, "produce", "file", str(video), "--source", "cam", "--no-progress", *extra],
                          env=env, capture_output=True, text=True, timeout=60, check=True)


def start_workers(env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*VIGIL, "work", "-n", "2", *extra], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_results(client: redis.Redis, ns: str, n: int, timeout: float = 30.0) -> None:
    key = SourceKeys(ns, "cam").results
    deadline = time.monotonic() + timeout
    while int(client.xlen(key)) < n + 1 and time.monotonic() < deadline:  # + the end-of-stream result
        time.sleep(0.05)


def assert_exactly_once(client: redis.Redis, ns: str, n: int) -> None:
    seqs = Counter(r.seq for r in read_results(client, ns, "cam"))
    assert sorted(seqs) == list(range(n)), "missing frames"
    assert max(seqs.values()) == 1, "duplicate results"
    assert [r.type for r in read_results(client, ns, "cam", include_eos=True)].count("eos") == 1


def test_n_frames_in_exactly_n_results(pipeline_env, client, namespace, small_video) -> None:
    produce(pipeline_env, small_video)
    proc = start_workers(pipeline_env, "--burst")
    assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    assert_exactly_once(client, namespace, 60)
    pending = client.xpending(SourceKeys(namespace, "cam").frames, GROUP)
    assert pending["pending"] == 0


def test_workers_before_producer_then_sigterm_drains(pipeline_env, client, namespace, small_video) -> None:
    proc = start_workers(pipeline_env)
    time.sleep(1.0)
    produce(pipeline_env, small_video, "--every", "2")
    wait_results(client, namespace, 30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert_exactly_once(client, namespace, 30)


def test_crashed_consumer_entries_are_reclaimed(pipeline_env, client, namespace, small_video) -> None:
    """A consumer that read a batch and died (same PEL state as a SIGKILLed worker) loses nothing."""
    produce(pipeline_env, small_video)
    keys = SourceKeys(namespace, "cam")
    client.xreadgroup(GROUP, "ghost", {keys.frames: ">"}, count=25)
    proc = start_workers(pipeline_env, "--burst")
    assert proc.wait(60) == 0
    assert_exactly_once(client, namespace, 60)


def test_sigkilled_worker_is_respawned_and_nothing_is_lost(pipeline_env, client, namespace, small_video) -> None:
    env = {**pipeline_env, "VIGIL_MAX_BATCH": "8", "VIGIL_MAX_WAIT_MS": "300"}
    proc = start_workers(env)
    producer = subprocess.Popen([*VIGIL, "produce", "file", str(small_video), "--source", "cam", "--no-progress",
                                 "--realtime"], env=env)  # 2.4 s at 25 fps: batches fill over 300 ms
    victim = wait_for_pending_consumer(client, SourceKeys(namespace, "cam").frames)
    os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)  # consumer names are host:pid
    assert producer.wait(30) == 0
    wait_results(client, namespace, 60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    log = proc.stderr.read() if proc.stderr else ""
    assert_exactly_once(client, namespace, 60)
    assert "respawning" in log and "janitor reclaimed" in log


def wait_for_pending_consumer(client: redis.Redis, key: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.exists(key):
            pending = client.xpending_range(key, GROUP, "-", "+", 1)
            if pending:
                return str(pending[0]["consumer"].decode())
        time.sleep(0.01)
    raise AssertionError("no worker ever held a pending entry")


def test_undecodable_frame_is_dead_lettered_and_the_rest_flow(pipeline_env, client, namespace, small_video) -> None:
    produce(pipeline_env, small_video)
    client.xadd(SourceKeys(namespace, "cam").frames, {b"f": b"\xc1not msgpack"}, id="2-0")
    proc = start_workers(pipeline_env, "--burst")
    assert proc.wait(60) == 0
    assert_exactly_once(client, namespace, 60)
    dead = read_dead(client, namespace, "cam")
    assert [(d["entry_id"], "msgpack" in d["reason"]) for d in dead] == [("2-0", True)]


def test_killed_producer_resumes_without_gap_or_duplicate(pipeline_env, client, namespace, small_video) -> None:
    env = {**pipeline_env, "VIGIL_HIGH_WATER": "8"}
    cmd = [*VIGIL, "produce", "file", str(small_video), "--source", "cam", "--no-progress"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    key = SourceKeys(namespace, "cam").frames
    deadline = time.monotonic() + 30
    while (not client.exists(key) or client.xlen(key) < 8) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    first.send_signal(signal.SIGKILL)  # paused on backpressure, mid-file: no workers yet
    first.wait(10)
    sent = int(client.xlen(key))
    assert 8 <= sent < 60
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = start_workers(env, "--burst")
    assert second.wait(60) == 0
    assert workers.wait(60) == 0
    assert int(client.xlen(key)) == 61  # 60 frames + end of stream, each once
    assert_exactly_once(client, namespace, 60)


def test_worker_process_never_imports_tensorflow_and_stays_small(pipeline_env) -> None:
    code = (
        "import sys, psutil\n"
        "from pathlib import Path\n"
        "from workers.worker import Worker, WorkerConfig\n"
        "from workers.reader import ReadPolicy\n"
        f"w = Worker(WorkerConfig({pipeline_env['REDIS_URL']!r}, 'x', Path({pipeline_env['VIGIL_BUNDLE']!r}), "
        "ReadPolicy()))\n"
        "print('tensorflow' in sys.modules, psutil.Process().memory_info().rss // 2**20)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()}).stdout.split()
    assert out[0] == "False"
    assert int(out[1]) < 300


def test_frames_past_max_deliveries_are_dead_lettered(pipeline_env, client, namespace, small_video) -> None:
    produce(pipeline_env, small_video, "--every", "10")
    keys = SourceKeys(namespace, "cam")
    read = client.xreadgroup(GROUP, "ghost", {keys.frames: ">"}, count=2)
    ids = [eid for eid, _ in read[0][1]]
    client.xclaim(keys.frames, GROUP, "ghost", 0, ids, retrycount=5)  # as if 5 workers died on them
    proc = start_workers(pipeline_env, "--burst")
    assert proc.wait(60) == 0
    dead = read_dead(client, namespace, "cam")
    assert sorted(d["entry_id"] for d in dead) == sorted(i.decode() for i in ids)
    assert all("max_deliveries=3" in d["reason"] for d in dead)
    assert sorted(r.seq for r in read_results(client, namespace, "cam")) == [2, 3, 4, 5]


def test_batches_respect_max_batch_across_sources(client, namespace, small_video, pipeline_env) -> None:
    from workers.reader import BatchReader, ReadPolicy

    for name in ("a", "b"):
        subprocess.run([*VIGIL, "produce", "file", str(small_video), "--source", name, "--no-progress"],
                       env=pipeline_env, check=True, capture_output=True)
    reader = BatchReader(client, namespace, "t", ReadPolicy(max_batch=10, per_source_cap=6, max_wait_ms=0))
    sizes = []
    while batch := reader.next_batch():
        assert len(batch) <= 10 and max(Counter(e.source for e in batch).values()) <= 6
        sizes.append(len(batch))
    assert sum(sizes) == 2 * 61


def test_image_folder_with_jpeg_transport(pipeline_env, client, namespace, image_folder) -> None:
    subprocess.run([*VIGIL, "produce", "file", str(image_folder), "--source", "cam", "--transport", "jpeg",
                    "--no-progress"], env=pipeline_env, check=True, capture_output=True, timeout=60)
    proc = start_workers(pipeline_env, "--burst")
    assert proc.wait(60) == 0
    assert_exactly_once(client, namespace, 5)


def test_rerunning_a_finished_source_sends_nothing(pipeline_env, client, namespace, small_video) -> None:
    produce(pipeline_env, small_video, "--every", "6")
    out = produce(pipeline_env, small_video, "--every", "6", "--json").stdout
    assert '"sent": 0' in out and '"already_done": true' in out
    assert int(client.xlen(SourceKeys(namespace, "cam").frames)) == 11


def test_file_refuses_a_live_cameras_source(pipeline_env, client, namespace, small_video) -> None:
    client.hset(SourceKeys(namespace, "cam").meta, mapping={"mode": "live"})
    cmd = [*VIGIL, "produce", "file", str(small_video), "--source", "cam", "--restart"]
    out = subprocess.run(cmd, env=pipeline_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "live camera" in out.stderr
    assert not client.exists(SourceKeys(namespace, "cam").frames)
