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

from common.broker import EmbeddedBroker, connect
from common.errors import BrokerError, WorkerError
from common.streams import SourceKeys
from tests.conftest import TINY_BUNDLE

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


def test_broker_lost_mid_run_exits_with_the_broker_code_and_no_traceback(small_video: Path) -> None:
    with EmbeddedBroker() as broker:
        with connect(broker.url) as admin:
            admin.config_set("requirepass", "s3cret")
        url = broker.url.replace("redis://", "redis://:s3cret@")
        cmd = [*VIGIL, "produce", "file", str(small_video), "--source", "cam", "--no-progress", "--realtime"]
        producer = subprocess.Popen(cmd, env=env_for(url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)  # --realtime: 2.4 s for the 60 frames, one per entry
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
