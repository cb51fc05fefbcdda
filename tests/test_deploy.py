"""The deploy manifests name streams and groups by hand; keep them in step with common/streams.py."""

import math
from pathlib import Path

import yaml

from common.settings import Settings
from common.streams import GROUP, SourceKeys
from producers.file_producer import CHUNK

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _max_file_lag_entries() -> float:
    """The most entries a file source's group can lag behind: the producer pauses above its high-water mark
    (frames), and a send is at most one chunk."""
    settings = Settings()
    return (settings.high_water + max(CHUNK, settings.pack_frames)) / settings.pack_frames


def _stream_triggers(path: Path) -> tuple[dict, list[dict]]:
    scaled = next(d for d in _docs(path) if d["kind"] == "ScaledObject")
    triggers = [t for t in scaled["spec"]["triggers"] if t["type"] == "redis-streams"]
    assert triggers
    for trigger in triggers:
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == GROUP
        assert meta["stream"] == SourceKeys("vigil", "input").frames
        assert ".svc.cluster.local:" in meta["address"]  # KEDA resolves it from its own namespace
    return scaled, triggers


def test_keda_lag_thresholds_can_be_reached() -> None:
    """A lag threshold above what backpressure lets build up never scales (it once asked for 200 entries per
    pod, against ~127 at most: one pod for ever)."""
    most = _max_file_lag_entries()
    scaled, triggers = _stream_triggers(DEPLOY / "k8s" / "workers.yaml")
    for trigger in triggers:
        # the HPA asks for ceil(lag / lagCount) pods
        assert math.ceil(most / int(trigger["metadata"]["lagCount"])) >= scaled["spec"]["maxReplicaCount"]
    scaled, triggers = _stream_triggers(DEPLOY / "k8s" / "workers-gpu.yaml")
    for trigger in triggers:
        assert int(trigger["metadata"]["activationLagCount"]) < most
        assert int(trigger["metadata"]["lagCount"]) < most


def test_redis_config_keeps_streams_durable() -> None:
    conf = (DEPLOY / "redis" / "redis.conf").read_text().split("\n")
    assert "appendonly yes" in conf
    assert "maxmemory-policy noeviction" in conf
    # noeviction refuses writes only at maxmemory: without one, memory grows until the kernel kills the server
    assert any(line.startswith("maxmemory ") for line in conf)


def test_kubernetes_redis_refuses_writes_before_its_pod_is_killed() -> None:
    docs = _docs(DEPLOY / "k8s" / "redis.yaml")
    conf = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["redis.conf"]
    [maxmemory] = [line.split()[1] for line in conf.splitlines() if line.startswith("maxmemory ")]
    assert maxmemory.endswith("gb")
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and int(maxmemory[:-2]) * 10**9 < int(limit[:-2]) * 2**30


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
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["VIGIL_PER_SOURCE_CAP"]) >= int(env["VIGIL_MAX_BATCH"])  # one source can fill a GPU batch
    assert 'CMD ["work", "--runtime", "savedmodel"' in (DEPLOY / "Dockerfile").read_text()
    from workers.cli import work  # the flag the manifest passes exists, with that value

    [runtime] = [p for p in work.params if p.name == "runtime"]
    assert "savedmodel" in runtime.type.choices  # type: ignore[attr-defined]
