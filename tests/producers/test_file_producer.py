"""produce_file: image folders and realtime pacing, against a real broker."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

import producers.files.publisher
from common.bundle import InputSpec
from common.errors import ConfigError, Interrupted
from common.preprocess import preprocess
from common.schemas import decode_entry
from common.streams import SourceKeys
from producers.files.producer import FileJob, produce_file
from producers.files.sources import Sampling, iter_frames
from producers.roi import crop
from tests.helpers import TINY_BUNDLE, VIGIL, assert_exactly_once, start_workers

pytestmark = pytest.mark.integration
SPEC = InputSpec(height=28, width=28, channels=1, color="gray")


def test_a_folder_of_8_and_16_bit_images_is_sent(client: redis.Redis, namespace: str, tmp_path: Path) -> None:
    for i in range(4):
        pixels = np.full((40, 30), 50 * (i + 1), np.uint8)
        cv2.imwrite(str(tmp_path / f"img{i}.png"), pixels.astype(np.uint16) * 257 if i % 2 else pixels)
    report = produce_file(client, namespace, FileJob(tmp_path, "mixed", SPEC, pack=8), high_water=10_000)
    assert (report.frames, report.sent) == (4, 4)
    frames = [f for _, fields in client.xrange(SourceKeys(namespace, "mixed").frames) for f in decode_entry(fields)]
    assert [f.dtype for f in frames if not f.eos] == ["uint8"] * 4


def test_resumed_realtime_run_does_not_wait_for_the_media_time_already_sent(client: redis.Redis, namespace: str,
                                                                            small_video: Path) -> None:
    produce_file(client, namespace, FileJob(small_video, "full", SPEC, pack=1), high_water=10_000)
    full, resumed = SourceKeys(namespace, "full"), SourceKeys(namespace, "resumed")
    for entry_id, fields in client.xrange(full.frames, count=50):  # killed after 50 frames: 2.0 s of media time
        client.xadd(resumed.frames, fields, id=entry_id)
    client.hset(resumed.meta, mapping={"path": str(small_video.resolve()), "epoch": client.hget(full.meta, "epoch")})
    started = time.time()
    report = produce_file(client, namespace, FileJob(small_video, "resumed", SPEC, realtime=True),
                          high_water=10_000)
    assert (report.resumed_from, report.sent) == (50, 10)
    epoch = int(client.xinfo_stream(resumed.frames)["last-generated-id"].split(b"-")[0])
    new = [f for _, fields in client.xrange(resumed.frames, min=f"{epoch}-50", max=f"{epoch}-59")
           for f in decode_entry(fields)]
    assert new[0].produced_at - started < 1.0
    assert new[-1].produced_at - new[0].produced_at >= 9 / 25 - 0.02  # still paced at media speed


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,500 frames of 160x120 H.264: long enough for a signal to land while frames are being decoded."""
    out = tmp_path_factory.mktemp("long") / "long.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-t", "60",
                    "-pix_fmt", "yuv420p", "-g", "50", str(out)], check=True, timeout=120)
    return out


def test_ctrl_c_stops_cleanly_and_the_next_run_resumes(redis_url: str, client: redis.Redis, namespace: str,
                                                       long_video: Path) -> None:
    """SIGINT while the decoder threads run: exit 130, no traceback, no "FATAL", and a second run sends the rest,
    no gap, no duplicate. A KeyboardInterrupt could leave a lock of the decoder threads held (the producer would
    then hang in its exit for good) or a thread inside OpenCV at interpreter shutdown ("FATAL: exception not
    rethrown", exit 134)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(REDIS_URL=redis_url, VIGIL_NAMESPACE=namespace, VIGIL_BUNDLE=str(TINY_BUNDLE),
               VIGIL_HIGH_WATER="100000", VIGIL_PACK_FRAMES="4")
    cmd = [sys.executable, "-m", "common.cli", "produce", "file", str(long_video), "--source", "long", "--no-progress"]
    keys = SourceKeys(namespace, "long")
    for attempt in range(3):  # each lands at a different point of the decode
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while int(client.hget(keys.meta, "produced") or 0) < 200 * (attempt + 1) and proc.poll() is None:
            assert time.monotonic() < deadline, "the producer sent nothing"
            time.sleep(0.002)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)  # a decoder's lock left held would hang it here for good
        if proc.returncode == 0:
            break  # it had finished before the signal: nothing left to interrupt
        assert proc.returncode == 130 and "interrupted: source long: stopped at frame" in err, err[-2000:]
        assert "Traceback" not in err and "FATAL" not in err
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode == 0
    seqs = [f.seq for _, fields in client.xrange(keys.frames) for f in decode_entry(fields)]
    assert seqs == list(range(1501))  # 1,500 frames and the end-of-stream marker, each once



@pytest.mark.slow
def test_two_producers_of_one_file_with_different_packs_send_each_frame_once(
        pipeline_env: dict[str, str], client: redis.Redis, namespace: str, long_video: Path) -> None:
    """Two `vigil produce file` of one source at once, packing 16 and 7 frames per entry. Both start before any
    worker and pause at a low high-water mark, so both are at the same place when the worker comes, and their
    packs overlap all along. Of a pack overlapping the stream's last one, only the frames after it go on the
    stream (checking only its last frame's id, the pack would go whole, and frames would get two results)."""
    env = {**pipeline_env, "VIGIL_HIGH_WATER": "64"}
    cmd = [*VIGIL, "produce", "file", str(long_video), "--source", "cam", "--no-progress", "--json"]
    procs = [subprocess.Popen([*cmd, "--pack", pack], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for pack in ("16", "7")]
    keys, owners = SourceKeys(namespace, "cam"), set()
    deadline = time.monotonic() + 60
    while len(owners) < 2 and time.monotonic() < deadline:  # each names itself in the meta hash when it opens
        owners.add(client.hget(keys.meta, "producer"))
        time.sleep(0.005)
    owners.discard(None)
    assert owners, "no producer opened the source"
    time.sleep(1.0 if len(owners) == 2 else 5.0)  # both paused at the mark (both opens may fall between two looks)
    workers = start_workers(env, "--burst")
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert workers.wait(120) == 0, workers.communicate()
    assert_exactly_once(client, namespace, 1500)
    reports = [json.loads(out) for out, _ in outputs]
    assert sum(r["sent"] for r in reports) == 1500  # between them; each found the rest already sent
    assert all(r["resumed_from"] + r["sent"] + r["skipped"] == 1500 for r in reports)
    assert sum(r["skipped"] for r in reports) > 0, "they never sent the same frames: the test proves nothing"


def test_a_producer_paused_with_no_worker_says_why_and_stops_on_request(
        client: redis.Redis, namespace: str, small_video: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Paused above the high-water mark with no worker, it warns that no worker has joined and for how long it
    has paused, and it stops on request (Interrupted) rather than waiting for ever."""
    monkeypatch.setattr(producers.files.publisher, "PAUSE_WARN_S", 0.3)
    stop, outcome = threading.Event(), []

    def run() -> None:
        try:
            produce_file(client, namespace, FileJob(small_video, "idle", SPEC, pack=4), high_water=8, stop=stop)
        except Interrupted as exc:
            outcome.append(exc)

    with caplog.at_level(logging.WARNING, logger="producers.files.publisher"):
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 20
        while "no worker has joined" not in caplog.text:
            assert time.monotonic() < deadline and thread.is_alive(), caplog.text
            time.sleep(0.05)
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and len(outcome) == 1
    assert "paused for" in caplog.text and "above the high-water mark of 8" in caplog.text
    assert "stopped while paused" in str(outcome[0])


def test_a_truncated_video_is_sent_with_a_warning_naming_what_is_missing(
        client: redis.Redis, namespace: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An mp4 cut at 60% (its index still announces 600 frames): every frame it holds is sent, with a warning
    that it ended before the count its container announces; a whole file gets no such warning."""
    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-t", "24",
                    "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(whole)], check=True, timeout=120)
    cut.write_bytes(whole.read_bytes()[:int(whole.stat().st_size * 0.6)])
    with caplog.at_level(logging.WARNING, logger="producers.files.producer"):
        report = produce_file(client, namespace, FileJob(cut, "cut", SPEC), high_water=10_000)
    assert report.expected_frames == 600 and 100 < report.frames < 540 and report.sent == report.frames
    assert f"ended after {report.frames} frames, but its container announces about 600" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="producers.files.producer"):
        produce_file(client, namespace, FileJob(whole, "whole", SPEC), high_water=10_000)
    assert "container announces" not in caplog.text


def test_bad_paths_are_refused_before_any_source_is_registered(pipeline_env: dict[str, str], client: redis.Redis,
                                                               namespace: str, tmp_path: Path,
                                                               small_video: Path) -> None:
    """A path that is not a video (or a folder without images, or with an unreadable one) is refused before any
    source is registered: a registered source that never ends would hold `vigil work --burst` waiting for good.
    Two paths that would be one source are refused before the first is sent."""
    fake, empty, broken = tmp_path / "fake.mp4", tmp_path / "empty", tmp_path / "broken"
    fake.write_text("not a video")
    empty.mkdir()
    (empty / "not-an-image.png").mkdir()  # a folder, whatever its name says
    broken.mkdir()
    (broken / "0.png").write_bytes(b"garbage")
    for args, code, said in (([str(small_video), str(fake)], 7, "cannot be opened as a video"),
                             ([str(empty)], 7, "holds no images"),
                             ([str(broken)], 7, "0.png cannot be read"),
                             ([str(small_video), str(tmp_path / "copy" / small_video.name)], 2, "would all be source")):
        if "copy" in args[-1]:
            Path(args[-1]).parent.mkdir()
            Path(args[-1]).write_bytes(small_video.read_bytes())
        out = subprocess.run([*VIGIL, "produce", "file", *args, "--no-progress", "--json"], env=pipeline_env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == code and said in out.stderr and out.stdout == "", out.stderr[-2000:]
        assert "Traceback" not in out.stderr
    assert client.smembers(f"{namespace}:sources") == set() and not list(client.scan_iter(match=f"{namespace}:*"))


def test_a_path_that_fails_midway_still_gets_a_json_record(pipeline_env: dict[str, str], tmp_path: Path,
                                                           client: redis.Redis, namespace: str) -> None:
    shots = tmp_path / "shots"
    shots.mkdir()
    for i in range(3):
        cv2.imwrite(str(shots / f"{i}.png"), np.full((32, 32, 3), 40 * i, np.uint8))
    (shots / "9.png").write_bytes(b"garbage")
    out = subprocess.run([*VIGIL, "produce", "file", str(shots), "--no-progress", "--json"], env=pipeline_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 7
    record = json.loads(out.stdout)
    assert record["source"] == "shots" and "9.png cannot be read" in record["error"]
    assert "--restart" in out.stderr  # the folder's content changes when the image is fixed: a resume is refused
    meta = client.hgetall(SourceKeys(namespace, "shots").meta)
    assert b"producer" not in meta and b"producer_seen" not in meta  # it no longer writes the source: no mark left


def test_a_video_produced_with_an_roi_sends_each_frame_cut_to_it(client: redis.Redis, namespace: str,
                                                                 small_video: Path) -> None:
    roi = (40, 10, 64, 48)
    produce_file(client, namespace, FileJob(small_video, "roi", SPEC, Sampling(every=6), roi=roi), high_water=10_000)
    sent = [f.pixels() for _, fields in client.xrange(SourceKeys(namespace, "roi").frames)
            for f in decode_entry(fields) if not f.eos]
    wanted = [preprocess(crop(img, roi), SPEC) for _, img in iter_frames(small_video, Sampling(every=6))]
    assert len(sent) == len(wanted) == 10
    assert all(np.array_equal(got, want) for got, want in zip(sent, wanted, strict=True))


def test_a_resume_with_another_roi_is_refused(client: redis.Redis, namespace: str, small_video: Path) -> None:
    produce_file(client, namespace, FileJob(small_video, "cam", SPEC, roi=(0, 0, 80, 60)), high_water=10_000)
    for roi in ((0, 0, 80, 64), None):
        with pytest.raises(ConfigError, match=r"sampling was 'every=1 roi=0,0,80,60', now 'every=1"):
            produce_file(client, namespace, FileJob(small_video, "cam", SPEC, roi=roi), high_water=10_000)


def test_an_roi_outside_the_frame_exits_2_before_any_source_is_registered(
        pipeline_env: dict[str, str], client: redis.Redis, namespace: str, small_video: Path) -> None:
    out = subprocess.run([*VIGIL, "produce", "file", str(small_video), "--roi", "100,20,64,64", "--no-progress"],
                         env=pipeline_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "--roi 100,20,64,64 (x,y,w,h) does not fit the frames of" in out.stderr
    assert "(160x68 pixels, w x h)" in out.stderr and "Traceback" not in out.stderr
    assert not list(client.scan_iter(match=f"{namespace}:*"))
