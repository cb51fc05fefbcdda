"""End-to-end delivery semantics against a real server: producer -> stream -> worker pool -> results."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import msgpack
import numpy as np
import pytest
import redis

from common.schemas import Frame, decode_entry, encode_entry
from common.streams import GROUP, SourceKeys
from tests.helpers import VIGIL, assert_exactly_once, produce, start_workers
from vigil_results.reader import read_dead, read_results
from workers.reader import BurstState, frames_in

pytestmark = pytest.mark.integration
AFTER = 9_999_999_999_999  # entry ids <AFTER>-n come after a producer's (<server ms when it began>-<seq>)


def wait_results(client: redis.Redis, ns: str, n: int, timeout: float = 30.0) -> None:
    key = SourceKeys(ns, "cam").results
    deadline = time.monotonic() + timeout
    while int(client.xlen(key)) < n + 1 and time.monotonic() < deadline:  # + the end-of-stream result
        time.sleep(0.05)


def stream_seqs(client: redis.Redis, key: str) -> list[int]:
    """The seq of every frame on a frames stream, packs unpacked, in stream order (end of stream included)."""
    return [frame.seq for _, fields in client.xrange(key) for frame in decode_entry(fields)]


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


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_drains_the_held_batch(pipeline_env, client, namespace, small_video) -> None:
    """Ctrl-C signals the supervisor and every child at once, and the supervisor then sends each child a SIGTERM:
    a child takes both for one request and acks the batch it holds before exiting (taken for a second request,
    the SIGTERM would make it exit without acking)."""
    produce(pipeline_env, small_video)
    env = {**pipeline_env, "VIGIL_MAX_BATCH": "64", "VIGIL_PER_SOURCE_CAP": "64", "VIGIL_MAX_WAIT_MS": "4000",
           "VIGIL_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen([*VIGIL, "work", "-n", "1"], env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)  # its own group, as a terminal's job
    frames = SourceKeys(namespace, "cam").frames
    deadline = time.monotonic() + 30
    while client.xpending(frames, GROUP)["pending"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # the worker holds the 60 frames, waiting up to 4 s for more to fill its batch of 64
    assert client.xpending(frames, GROUP)["pending"] > 0
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(30) == 0
    _, err = proc.communicate()
    assert "stopping after 61 frames" in err  # 60 and the end-of-stream marker
    assert client.xpending(frames, GROUP)["pending"] == 0
    assert sorted(r.seq for r in read_results(client, namespace, "cam")) == list(range(60))


def test_crashed_consumer_entries_are_reclaimed(pipeline_env, client, namespace, small_video) -> None:
    """A consumer that read a batch and died (same PEL state as a SIGKILLed worker) loses nothing."""
    produce(pipeline_env, small_video)
    keys = SourceKeys(namespace, "cam")
    client.xreadgroup(GROUP, "ghost", {keys.frames: ">"}, count=25)
    proc = start_workers(pipeline_env, "--burst")
    assert proc.wait(60) == 0
    assert_exactly_once(client, namespace, 60)


@pytest.mark.slow
def test_sigkilled_worker_is_respawned_and_nothing_is_lost(pipeline_env, client, namespace, small_video) -> None:
    # Workers hold a batch's entries for 2 s (the kill must land while the victim holds some, even on a VM that
    # stalls this test for hundreds of ms), and only entries idle 3 s are reclaimed (never a live worker's).
    env = {**pipeline_env, "VIGIL_MAX_BATCH": "64", "VIGIL_MAX_WAIT_MS": "2000", "VIGIL_CLAIM_IDLE_MS": "3000"}
    proc = start_workers(env)
    producer = subprocess.Popen([*VIGIL, "produce", "file", str(small_video), "--source", "cam", "--no-progress",
                                 "--realtime"], env=env)  # 2.4 s at 25 fps
    victim = wait_for_pending_consumer(client, SourceKeys(namespace, "cam").frames)
    os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)  # consumer names are host:pid
    assert producer.wait(30) == 0
    wait_results(client, namespace, 60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    log = proc.stderr.read() if proc.stderr else ""
    assert_exactly_once(client, namespace, 60)
    assert "respawning" in log and "janitor reclaimed" in log and "entries of source cam" in log


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
    client.xadd(SourceKeys(namespace, "cam").frames, {b"f": b"\xc1not msgpack"}, id=f"{AFTER}-0")
    proc = start_workers(pipeline_env, "--burst")
    assert proc.wait(60) == 0
    assert_exactly_once(client, namespace, 60)
    dead = read_dead(client, namespace, "cam")
    assert [(d["entry_id"], "msgpack" in d["reason"]) for d in dead] == [(f"{AFTER}-0", True)]


def test_a_bad_frame_in_a_pack_is_dead_lettered_alone(pipeline_env, client, namespace, small_video) -> None:
    produce(pipeline_env, small_video)
    keys = SourceKeys(namespace, "cam")
    pixels = np.zeros((28, 28, 1), np.uint8)
    pack = [Frame.from_pixels("cam", seq, pixels, 0.0, time.time(), encoding="jpeg") for seq in (100, 101, 102)]
    pack[1] = dataclasses.replace(pack[1], data=b"not a jpeg")
    client.xadd(keys.frames, encode_entry(pack), id=f"{AFTER}-0")  # type: ignore[arg-type]
    client.xadd(keys.frames, {b"p": b"\xc1garbage", b"n": b"5"}, id=f"{AFTER}-1")  # a pack that does not decode
    proc = start_workers(pipeline_env, "--burst")
    assert proc.wait(60) == 0
    dead = read_dead(client, namespace, "cam")
    assert [(d["entry_id"], d["frame_id"], d["frames"]) for d in dead] == [(f"{AFTER}-0", "cam:101", "1"),
                                                                          (f"{AFTER}-1", "", "5")]
    assert "JPEG" in dead[0]["reason"] and "msgpack" in dead[1]["reason"]
    seqs = sorted(r.seq for r in read_results(client, namespace, "cam"))
    assert seqs == [*range(60), 100, 102]
    assert client.hget(keys.meta, "dead") == b"6" and client.hget(keys.meta, "processed") == b"62"


def frame_payload(**changes: object) -> dict[bytes, bytes]:
    """A one-frame entry as a foreign or buggy producer might write it: a valid frame with fields replaced."""
    good = Frame.from_pixels("cam", 200, np.zeros((28, 28, 1), np.uint8), 0.0, time.time())
    payload = {"v": 1, **{f.name: getattr(good, f.name) for f in dataclasses.fields(Frame)}, **changes}
    return {b"f": msgpack.packb(payload, use_bin_type=True)}


def test_frames_with_fields_of_the_wrong_type_are_dead_lettered_not_a_crash_loop(pipeline_env, client, namespace,
                                                                               small_video) -> None:
    """Each bad field (a TypeError, ValueError or cv2.error in decoding) is dead-lettered on first delivery, with
    no traceback, and the rest of the batch is processed: a worker killed by it would have the janitor hand the
    same batch to the next worker, for ever."""
    produce(pipeline_env, small_video)
    keys = SourceKeys(namespace, "cam")
    bad = {f"{AFTER}-0": frame_payload(seq="16"), f"{AFTER}-1": frame_payload(captured_at="0.0"),
           f"{AFTER}-2": frame_payload(encoding="jpeg", data=b""), f"{AFTER}-3": frame_payload(source=7),
           f"{AFTER}-4": frame_payload(produced_at=None), f"{AFTER}-5": frame_payload(eos="yes")}
    for entry_id, fields in bad.items():
        client.xadd(keys.frames, fields, id=entry_id)  # type: ignore[arg-type]
    proc = start_workers(pipeline_env, "--burst")
    assert proc.wait(60) == 0
    _, err = proc.communicate()
    assert "Traceback" not in err
    assert sorted(r.seq for r in read_results(client, namespace, "cam")) == list(range(60))
    dead = {d["entry_id"]: d for d in read_dead(client, namespace, "cam")}
    assert sorted(dead) == sorted(bad)
    assert all(d["deliveries"] == "1" for d in dead.values()), "dead-lettered on first sight, not after crashes"
    assert "seq" in dead[f"{AFTER}-0"]["reason"] and "captured_at" in dead[f"{AFTER}-1"]["reason"]
    assert "JPEG" in dead[f"{AFTER}-2"]["reason"] and "source" in dead[f"{AFTER}-3"]["reason"]
    assert "produced_at" in dead[f"{AFTER}-4"]["reason"]
    assert "eos" in dead[f"{AFTER}-5"]["reason"]  # not a bogus eos result


def kill_paused_producer(client: redis.Redis, env: dict[str, str], cmd: list[str], key: str, entries: int) -> None:
    """Start a producer, wait until ``entries`` are on ``key`` and it pauses on backpressure, SIGKILL it."""
    producer = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while (not client.exists(key) or client.xlen(key) < entries) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    producer.send_signal(signal.SIGKILL)  # mid-file, no workers yet: no end-of-stream marker
    producer.wait(10)


def test_burst_idle_exits_when_a_producer_died_before_its_end_of_stream(pipeline_env, client, namespace,
                                                                       small_video) -> None:
    env = {**pipeline_env, "VIGIL_HIGH_WATER": "8"}
    cmd = [*VIGIL, "produce", "file", str(small_video), "--source", "cam", "--no-progress", "--pack", "4"]
    key = SourceKeys(namespace, "cam").frames
    kill_paused_producer(client, env, cmd, key, 2)
    sent = stream_seqs(client, key)
    workers = start_workers(env, "--burst", "--burst-idle", "1")
    _, stderr = workers.communicate(timeout=60)
    assert workers.returncode == 0
    assert "never sent an end-of-stream marker" in stderr and "cam" in stderr
    assert sorted(r.seq for r in read_results(client, namespace, "cam")) == sent


def test_burst_waits_for_a_first_source_and_burst_idle_ends_the_wait(pipeline_env) -> None:
    workers = start_workers(pipeline_env, "--burst", "--burst-idle", "1")  # no producer at all
    _, stderr = workers.communicate(timeout=60)
    assert workers.returncode == 0 and "no source was registered within" in stderr


def test_burst_idle_needs_burst(pipeline_env) -> None:
    out = subprocess.run([*VIGIL, "work", "--burst-idle", "5"], env=pipeline_env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "--burst-idle only applies with --burst" in out.stderr


def test_killed_producer_resumes_without_gap_or_duplicate(pipeline_env, client, namespace, small_video) -> None:
    env = {**pipeline_env, "VIGIL_HIGH_WATER": "8"}
    cmd = [*VIGIL, "produce", "file", str(small_video), "--source", "cam", "--no-progress", "--pack", "3"]
    key = SourceKeys(namespace, "cam").frames
    kill_paused_producer(client, env, cmd, key, 3)
    sent = stream_seqs(client, key)
    assert 8 <= len(sent) < 60 and sent == list(range(len(sent)))
    assert int(client.xlen(key)) == -(-len(sent) // 3)  # packs of (at most) 3 frames
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = start_workers(env, "--burst")
    assert second.wait(60) == 0
    assert workers.wait(60) == 0
    # The stream itself no longer holds them all (processed entries are trimmed): a frame sent twice or never
    # shows as a duplicate or missing result.
    assert_exactly_once(client, namespace, 60)
    assert client.hget(SourceKeys(namespace, "cam").meta, "produced") == b"61"  # 60 frames + end of stream


def test_rerun_with_other_sampling_or_a_changed_file_is_refused(pipeline_env, client, namespace, small_video,
                                                              tmp_path) -> None:
    """A resume whose frames would not line up with those on the stream is refused: other sampling (a --realtime
    run killed, then resumed with --every 10, would lose the end-of-stream marker and break the counters), or the
    file changed. The same bytes under a new inode are the same source."""
    video = tmp_path / small_video.name
    shutil.copy(small_video, video)
    produce(pipeline_env, video, "--every", "2")
    cmd = [*VIGIL, "produce", "file", str(video), "--source", "cam", "--no-progress"]
    other = subprocess.run([*cmd, "--every", "3"], env=pipeline_env, capture_output=True, text=True, timeout=60)
    assert other.returncode == 2 and "sampling was 'every=2', now 'every=3'" in other.stderr, other.stderr
    assert "--restart" in other.stderr
    assert "(0 sent now" in produce(pipeline_env, video, "--every", "2").stdout  # the same run again: nothing to do
    copy = tmp_path / "copy.avi"
    shutil.copy(video, copy)
    os.replace(copy, video)  # the same bytes again (a new mtime and inode): still the same source
    assert "(0 sent now" in produce(pipeline_env, video, "--every", "2").stdout
    with video.open("ab") as f:
        f.write(b"\0" * 64)  # other bytes: refused
    changed = subprocess.run([*cmd, "--every", "2"], env=pipeline_env, capture_output=True, text=True, timeout=60)
    assert changed.returncode == 2 and "content was '" in changed.stderr, changed.stderr
    produce(pipeline_env, video, "--every", "3", "--restart")
    assert len(stream_seqs(client, SourceKeys(namespace, "cam").frames)) == 20 + 1


def test_a_file_sources_stream_keeps_only_what_is_not_processed_yet(pipeline_env, client, namespace,
                                                                    small_video) -> None:
    """Each time the producer reads the lag it trims what was delivered and acked: what stays is at most the
    high-water mark (8 frames) plus what the workers held at the last reading (2 x batches of 4, and a read's
    carry-over), far fewer than the 31 entries sent."""
    env = {**pipeline_env, "VIGIL_HIGH_WATER": "8", "VIGIL_MAX_BATCH": "4", "VIGIL_PER_SOURCE_CAP": "4"}
    proc = start_workers(env, "--burst")
    produce(env, small_video, "--pack", "2")  # 30 entries of 2 frames + the end of stream
    assert proc.wait(60) == 0
    assert_exactly_once(client, namespace, 60)
    assert client.xlen(SourceKeys(namespace, "cam").frames) <= 16


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
    produce(pipeline_env, small_video, "--every", "10", "--pack", "2")  # 6 frames: packs 0-1, 2-3, 4-5
    keys = SourceKeys(namespace, "cam")
    read = client.xreadgroup(GROUP, "ghost", {keys.frames: ">"}, count=2)
    ids = [eid for eid, _ in read[0][1]]
    client.xclaim(keys.frames, GROUP, "ghost", 0, ids, retrycount=5)  # as if 5 workers died on them
    proc = start_workers(pipeline_env, "--burst")
    assert proc.wait(60) == 0
    dead = read_dead(client, namespace, "cam")
    assert sorted(d["entry_id"] for d in dead) == sorted(i.decode() for i in ids for _ in range(2))
    assert sorted(d["frame_id"] for d in dead) == ["cam:0", "cam:1", "cam:2", "cam:3"]  # one letter per frame
    assert all("max_deliveries=3" in d["reason"] for d in dead)
    assert sorted(r.seq for r in read_results(client, namespace, "cam")) == [4, 5]
    assert client.hget(keys.meta, "dead") == b"4"


def test_batches_respect_max_batch_across_sources(client, namespace, small_video, pipeline_env) -> None:
    from workers.reader import BatchReader, ReadPolicy

    for name, pack in (("a", "1"), ("b", "2")):
        subprocess.run([*VIGIL, "produce", "file", str(small_video), "--source", name, "--no-progress",
                        "--pack", pack], env=pipeline_env, check=True, capture_output=True)
    reader = BatchReader(client, namespace, "t", ReadPolicy(max_batch=10, per_source_cap=6, max_wait_ms=0))
    sizes = []
    while batch := reader.next_batch():
        per_source: Counter[str] = Counter()
        for entry in batch:
            per_source[entry.source] += entry.frames
        assert frames_in(batch) <= 10 and max(per_source.values()) <= 6
        sizes.append(frames_in(batch))
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
    assert stream_seqs(client, SourceKeys(namespace, "cam").frames) == list(range(11))


def test_file_refuses_a_live_cameras_source(pipeline_env, client, namespace, small_video) -> None:
    client.hset(SourceKeys(namespace, "cam").meta, mapping={"mode": "live"})
    cmd = [*VIGIL, "produce", "file", str(small_video), "--source", "cam", "--restart"]
    out = subprocess.run(cmd, env=pipeline_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "live camera" in out.stderr
    assert not client.exists(SourceKeys(namespace, "cam").frames)


def test_finished_workers_leave_the_consumer_group(pipeline_env, client, namespace, small_video) -> None:
    produce(pipeline_env, small_video)
    proc = start_workers(pipeline_env, "--burst")
    assert proc.wait(60) == 0
    assert_exactly_once(client, namespace, 60)
    assert client.xinfo_consumers(SourceKeys(namespace, "cam").frames, GROUP) == []  # `vigil status` lists none


def test_a_settled_burst_worker_says_what_it_waits_for_once_per_period(monkeypatch) -> None:
    from workers.worker import QuietClock

    now = [100.0]
    monkeypatch.setattr("workers.worker.time.monotonic", lambda: now[0])
    clock = QuietClock()
    settled = BurstState(any_source=True, settled=True, not_ended=("cam",), lengths=(5,))
    said = []
    for _ in range(130):  # 65 s settled, looked at every 0.5 s
        clock.observe(settled)
        said.append(clock.due_to_say(30.0))
        now[0] += 0.5
    assert sum(said) == 2 and said.index(True) == 60  # at 30 s and 60 s
    clock.observe(BurstState(any_source=True, settled=True, not_ended=("cam",), lengths=(6,)))  # a new entry
    assert not clock.due_to_say(30.0)
