"""The deploy manifests name streams and groups by hand; keep them in step with common/streams.py."""

from pathlib import Path

import yaml

from common.streams import GROUP, SourceKeys

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_keda_trigger_watches_a_real_frames_stream_and_group() -> None:
    scaled = next(d for d in _docs(DEPLOY / "k8s" / "workers.yaml") if d["kind"] == "ScaledObject")
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "redis-streams"
        assert meta["consumerGroup"] == GROUP
        assert meta["stream"] == SourceKeys("vigil", "cam1").frames


def test_redis_config_keeps_streams_durable() -> None:
    conf = (DEPLOY / "redis" / "redis.conf").read_text().split("\n")
    assert "appendonly yes" in conf
    assert "maxmemory-policy noeviction" in conf


def test_compose_workers_point_at_the_compose_redis() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose["services"]["worker"]["environment"]["REDIS_URL"].startswith("redis://redis:6379")
