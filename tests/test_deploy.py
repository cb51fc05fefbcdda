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


def test_gpu_workers_run_the_float_path_on_the_same_stream_and_group() -> None:
    docs = _docs(DEPLOY / "k8s" / "workers-gpu.yaml")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][:3] == ["work", "--runtime", "savedmodel"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["metadata"]["consumerGroup"] == GROUP
        assert trigger["metadata"]["stream"] == SourceKeys("vigil", "cam1").frames
    assert 'CMD ["work", "--runtime", "savedmodel"' in (DEPLOY / "Dockerfile").read_text()
    from workers.cli import work  # the flag the manifest passes exists, with that value

    [runtime] = [p for p in work.params if p.name == "runtime"]
    assert "savedmodel" in runtime.type.choices  # type: ignore[attr-defined]
