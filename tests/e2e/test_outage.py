"""The broker goes away mid-run: commands end with the broker's exit code and a one-line reason, not a
traceback, and a burst pool gives up instead of respawning its workers for ever."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from common.broker import connect
from common.embedded import EmbeddedBroker
from common.errors import BrokerError, BundleError, WorkerError
from common.streams import SourceKeys
from tests.helpers import TINY_BUNDLE

pytestmark = pytest.mark.integration
VIGIL = [sys.executable, "-m", "common.cli"]


def env_for(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(REDIS_URL=url, VIGIL_NAMESPACE="outage", VIGIL_BUNDLE=str(TINY_BUNDLE), VIGIL_LOG_LEVEL="WARNING")
    return env


def wait_for(check: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_broker_lost_mid_run_exits_with_the_broker_code_and_no_traceback(small_video: Path) -> None:
    with EmbeddedBroker() as broker:
        with connect(broker.url) as admin:
            admin.config_set("requirepass", "s3cret")
        url = broker.url.replace("redis://", "redis://:s3cret@")
        cmd = [*VIGIL, "produce", "file", str(small_video), "--source", "cam", "--no-progress", "--realtime"]
        producer = subprocess.Popen(cmd, env={**env_for(url), "VIGIL_BROKER_PATIENCE_S": "3"}, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)  # --realtime: 2.4 s for the 60 frames
        try:
            with connect(url) as client:
                wait_for(lambda: client.xlen(SourceKeys("outage", "cam").frames) >= 3)
            broker.stop()
            _, err = producer.communicate(timeout=60)
        finally:
            producer.kill()
    assert producer.returncode == BrokerError.exit_code, err
    assert "Traceback" not in err and "s3cret" not in err
    assert f"error: broker redis://***@127.0.0.1:{broker.port}/0 failed: ConnectionError" in err
    assert "Is the server up" in err and "REDIS_URL" in err
    assert "waiting up to 3 s for it (broker_patience_s)" in err


@pytest.mark.slow
def test_a_file_producer_waits_out_a_broker_restart(small_video: Path, tmp_path: Path) -> None:
    """A restart or failover takes longer than redis-py's retries (a few seconds): with broker_patience_s the
    producer waits it out, says so, and finishes with exit 0, every frame sent once."""
    data = tmp_path / "data"
    broker = EmbeddedBroker(appendonly=True, data_dir=data).start()
    cmd = [*VIGIL, "produce", "file", str(small_video), "--source", "cam", "--no-progress", "--realtime"]
    producer = subprocess.Popen(cmd, env={**env_for(broker.url), "VIGIL_BROKER_PATIENCE_S": "60"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with connect(broker.url) as client:
            wait_for(lambda: client.xlen(SourceKeys("outage", "cam").frames) >= 3)
        broker.stop()
        time.sleep(10)  # longer than redis-py's own retries
        broker = EmbeddedBroker(port=broker.port, appendonly=True, data_dir=data).start()
        _, err = producer.communicate(timeout=90)
        assert producer.returncode == 0, err
        assert "the broker is unreachable" in err and "the broker is back after" in err
        workers = subprocess.run([*VIGIL, "work", "-n", "1", "--burst"], env=env_for(broker.url), timeout=90,
                                 capture_output=True, text=True)
        assert workers.returncode == 0, workers.stderr
        with connect(broker.url) as client:
            seqs = [int(f[b"seq"]) for _, f in client.xrange(SourceKeys("outage", "cam").results)
                    if f[b"type"] == b"result"]
        assert sorted(seqs) == list(range(60))  # every frame once: none lost, none twice
    finally:
        producer.kill()
        broker.stop()


@pytest.mark.slow
def test_burst_pool_gives_up_on_workers_that_keep_failing() -> None:
    with EmbeddedBroker() as broker:
        workers = subprocess.Popen([*VIGIL, "work", "--burst", "-n", "1"], env=env_for(broker.url),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            with connect(broker.url) as client:
                wait_for(lambda: any(c["name"].startswith("outage:worker:") for c in client.client_list()))
            broker.stop()  # every worker now fails after redis-py's retries, and so does each respawned one
            _, err = workers.communicate(timeout=90)  # 5 failures: ~40 s
        finally:
            workers.kill()
    assert workers.returncode == WorkerError.exit_code, err
    assert "error: worker 0 failed 5 times in a row" in err and "--burst gives up" in err
    assert "was unreachable each time" in err and "lost the broker" in err
    assert "Traceback" not in err  # one line per lost worker, not a traceback (about 50 lines) per respawn


def worker_pids(client: redis.Redis) -> list[int]:
    return [int(c["name"].rsplit(":", 1)[1]) for c in client.client_list() if c["name"].startswith("outage:worker:")]


@pytest.mark.slow
def test_pool_is_back_soon_after_the_broker_is(small_video: Path) -> None:
    """A broker restarted on its port moments later (its old connections still in TIME_WAIT) is served again
    within 15 s, and the pool logs one line per lost worker. The respawn schedule itself (at most
    OUTAGE_MAX_BACKOFF_S apart) is tests/workers/test_pool.py's: a 20 s outage stays far below the crash backoff's
    30 s cap."""
    broker = EmbeddedBroker(appendonly=True).start()
    workers = subprocess.Popen([*VIGIL, "work", "-n", "1"], env=env_for(broker.url), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        with connect(broker.url) as client:
            wait_for(lambda: worker_pids(client))
        broker.stop()
        time.sleep(20)  # redis-py's retries run out (~5 s), then respawns fail, each backing off more
        broker = EmbeddedBroker(port=broker.port).start()
        back = time.monotonic()
        with connect(broker.url) as client:
            wait_for(lambda: worker_pids(client), timeout=30)
        assert time.monotonic() - back < 15  # a respawn within 4 s, its start-up, redis-py's retries
    finally:
        workers.terminate()
        _, err = workers.communicate(timeout=30)
        broker.stop()
    assert workers.returncode == 0, err
    assert "the broker is unreachable" in err and "lost the broker" in err and "Traceback" not in err


def test_workers_die_with_a_killed_pool() -> None:
    with EmbeddedBroker() as broker, connect(broker.url) as client:
        pool = subprocess.Popen([*VIGIL, "work", "-n", "2"], env=env_for(broker.url), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: len(worker_pids(client)) == 2)
            children = worker_pids(client)
            pool.kill()  # SIGKILL: no chance to stop its children
            pool.wait()
            wait_for(lambda: not worker_pids(client), timeout=20)
            wait_for(lambda: not any(map(_alive, children)), timeout=20)  # they drain, then exit
        finally:
            pool.kill()


def _alive(pid: int) -> bool:
    """Running; a zombie (exited, not yet reaped by whoever adopted it) is not."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False


def test_pool_stops_when_a_respawn_cannot_load_the_bundle(tmp_path: Path) -> None:
    """A bundle moved away after the pool started: the respawned child cannot load it, and the pool stops with
    exit 4 and one line saying so, instead of respawning it for ever with a traceback each time."""
    import shutil
    import signal

    bundle = shutil.copytree(TINY_BUNDLE, tmp_path / "bundle")
    with EmbeddedBroker() as broker, connect(broker.url) as client:
        env = {**env_for(broker.url), "VIGIL_BUNDLE": str(bundle)}
        pool = subprocess.Popen([*VIGIL, "work", "-n", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            wait_for(lambda: len(worker_pids(client)) == 2)
            shutil.rmtree(bundle)
            os.kill(worker_pids(client)[0], signal.SIGKILL)
            _, err = pool.communicate(timeout=60)
        finally:
            pool.kill()
    assert pool.returncode == BundleError.exit_code, err
    assert "cannot load the bundle" in err and "does not exist" in err and "Traceback" not in err


@pytest.mark.slow
def test_burst_pool_with_no_source_says_so_at_once() -> None:
    """A burst pool under a namespace with no source (a mistyped VIGIL_NAMESPACE) says so at once, before its
    --burst-idle exit, rather than waiting with nothing in the log but 'ready'."""
    with EmbeddedBroker() as broker:
        env = {**env_for(broker.url), "VIGIL_LOG_LEVEL": "INFO", "VIGIL_NAMESPACE": "typo"}
        done = subprocess.run([*VIGIL, "work", "-n", "1", "--burst", "--burst-idle", "3"], env=env,
                              capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    said = done.stderr.index("no source is registered under namespace 'typo' yet")
    assert said < done.stderr.index("no source was registered within")  # before the --burst-idle exit


@pytest.mark.slow
def test_pool_stops_when_the_broker_refuses_the_login() -> None:
    """A wrong password is a ConnectionError to redis-py, yet not an outage: the pool stops with exit 5 and says
    the login is refused, rather than retrying it every 4 s for ever."""
    import signal

    with EmbeddedBroker() as broker:
        with connect(broker.url) as admin:
            admin.config_set("requirepass", "s3cret")
        url = broker.url.replace("redis://", "redis://:s3cret@")
        pool = subprocess.Popen([*VIGIL, "work", "-n", "1"], env=env_for(url), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            with connect(url) as client:
                wait_for(lambda: worker_pids(client))
                victim = worker_pids(client)[0]
                client.config_set("requirepass", "rotated")  # the password changes under the running pool
            os.kill(victim, signal.SIGKILL)
            _, err = pool.communicate(timeout=60)
        finally:
            pool.kill()
    assert pool.returncode == BrokerError.exit_code, err
    assert "refuses the login" in err and "Check the user and password in REDIS_URL" in err
    assert "lost the broker" not in err and "s3cret" not in err and "Traceback" not in err
