"""`vigil status` against a real server: camera state, backlog (also when live trimming nulls XINFO's lag),
throughput from result ids, counters by reason, consumers with idle time; table, --json and --watch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from common.broker import ensure_group
from common.cli import main
from common.streams import GROUP, SourceKeys, registry_key
from tests.helpers import VIGIL

pytestmark = pytest.mark.integration


@pytest.fixture
def camera(client, namespace) -> SourceKeys:
    keys = SourceKeys(namespace, "cam1")
    client.sadd(registry_key(namespace), "cam1", "clip")
    client.hset(keys.meta, mapping={
        "mode": "live", "url": "rtsp://user:***@cam/stream", "state": "online", "state_since": time.time() - 30,
        "state_reason": "frames flowing", "produced": 10, "processed": 4, "dropped_trimmed": 1,
        "dropped_stale": 0, "dropped_superseded": 7, "reconnects": 2, "captured": 17})
    ensure_group(client, keys.frames, GROUP)
    ids = [client.xadd(keys.frames, {"f": b"x"}) for _ in range(10)]
    client.xreadgroup(GROUP, "host:1", {keys.frames: ">"}, count=4)  # 4 pending, 6 undelivered
    client.xdel(keys.frames, ids[-1])  # the producer's live cap deleting an undelivered entry
    for i in range(30):
        client.xadd(keys.results, {"seq": str(i)})
    client.hset(SourceKeys(namespace, "clip").meta, mapping={"path": "/videos/clip.mp4", "eos": 1, "produced": 3})
    return keys


@pytest.fixture
def env(monkeypatch, redis_url, namespace) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("VIGIL_NAMESPACE", namespace)


def test_status_json_reports_live_state_backlog_throughput_counters(env, camera, capsys) -> None:
    assert main(["status", "--json"]) == 0
    rows = {r["source"]: r for r in json.loads(capsys.readouterr().out)}
    cam = rows["cam1"]
    assert (cam["mode"], cam["state"], cam["state_reason"]) == ("live", "online", "frames flowing")
    assert 25 < time.time() - cam["state_since"] < 60
    assert (cam["entries"], cam["lag"], cam["pending"]) == (9, 5, 4)  # lag counted after the XDEL
    assert cam["results"] == 30 and cam["results_per_s"] == pytest.approx(3.0)
    assert cam["counters"] == {"captured": 17, "produced": 10, "processed": 4, "dead": 0, "reconnects": 2}
    assert cam["dropped"] == {"superseded": 7, "unpublished": 0, "trimmed": 1, "stale": 0}
    assert [(c["name"], c["pending"]) for c in cam["consumers"]] == [("host:1", 4)]
    assert 0 <= cam["consumers"][0]["idle_ms"] < 60_000
    clip = rows["clip"]
    assert (clip["mode"], clip["ended"], clip["state"], clip["url"]) == ("file", True, "ended", "/videos/clip.mp4")
    assert clip["lag"] is None and clip["consumers"] == [] and clip["results_per_s"] == 0


def test_status_json_state_agrees_with_the_table(env, client, namespace, capsys) -> None:
    client.sadd(registry_key(namespace), "done", "running")
    client.hset(SourceKeys(namespace, "done").meta, mapping={"path": "/v/done.mp4", "eos": 1})
    client.hset(SourceKeys(namespace, "running").meta, mapping={"path": "/v/running.mp4", "produced": 3})
    assert main(["status", "--json"]) == 0
    states = {r["source"]: r["state"] for r in json.loads(capsys.readouterr().out)}
    assert states == {"done": "ended", "running": None}
    assert main(["status"]) == 0
    table = {line.split()[0]: line.split()[2] for line in capsys.readouterr().out.splitlines()
             if line.split()[:1] in (["done"], ["running"])}
    assert table == {"done": "ended", "running": "-"}


def test_status_table_shows_camera_and_consumers(env, camera, capsys) -> None:
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    for text in ("cam1", "online 30s", "superseded 7", "host:1", "clip", "ended"):
        assert text in out, out


def test_status_watch_json_prints_a_line_per_refresh_until_interrupted(redis_url, namespace, camera) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "VIGIL_NAMESPACE": namespace}
    proc = subprocess.Popen([*VIGIL, "status", "--json", "--watch", "0.2"], env=env, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    lines = [proc.stdout.readline(), proc.stdout.readline()]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert [[r["source"] for r in json.loads(line)] for line in lines] == [["cam1", "clip"]] * 2


def test_a_camera_whose_producer_stopped_being_seen_shows_offline(env, camera, client, capsys) -> None:
    """A killed camera producer records nothing, so its last state, "online", stands only while the producer was
    seen lately: one not seen for 60 s shows as offline, saying so."""
    client.hset(camera.meta, "producer_seen", f"{time.time() - 1:.3f}")
    assert main(["status", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["source"] == "cam1")
    assert row["state"] == "online"
    client.hset(camera.meta, "producer_seen", f"{time.time() - 60:.3f}")
    assert main(["status", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["source"] == "cam1")
    assert row["state"] == "offline" and "producer not seen for 60 s" in row["state_reason"]


def test_a_consumer_that_stopped_reading_is_marked(env, camera, client, monkeypatch, capsys) -> None:
    """A killed worker cannot leave the group until the janitor forgets it: a consumer that has not read lately
    is marked "not reading, gone?", where the server tells (Redis 7.0 does not)."""
    from vigil_ops import status

    monkeypatch.setattr(status, "READING_WITHIN_S", 0.5)
    time.sleep(0.6)  # host:1 read at the fixture's set-up
    client.xreadgroup(GROUP, "host:2", {camera.frames: ">"}, count=1)
    assert main(["status", "--json"]) == 0
    cam = next(r for r in json.loads(capsys.readouterr().out) if r["source"] == "cam1")
    reading = {c["name"]: c["reading"] for c in cam["consumers"]}
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    if "inactive" not in client.xinfo_consumers(camera.frames, GROUP)[0]:  # Redis 7.0: idle since the last delivery
        assert reading == {"host:1": None, "host:2": None} and "gone?" not in out
        return
    assert reading == {"host:1": False, "host:2": True}
    assert "not reading, gone?" in out and out.count("gone?") == 1, out


def test_an_idle_worker_that_keeps_reading_is_not_marked(env, camera, client, monkeypatch, capsys) -> None:
    """Reads that deliver nothing: on Redis 7.0 they do not reset idle, so no verdict there."""
    from vigil_ops import status

    monkeypatch.setattr(status, "READING_WITHIN_S", 0.5)
    client.xreadgroup(GROUP, "host:3", {camera.frames: ">"}, count=100)  # takes the rest: nothing new after
    for _ in range(4):
        time.sleep(0.2)
        client.xreadgroup(GROUP, "host:3", {camera.frames: ">"}, count=1, block=10)
    assert main(["status", "--json"]) == 0
    cam = next(r for r in json.loads(capsys.readouterr().out) if r["source"] == "cam1")
    assert next(c["reading"] for c in cam["consumers"] if c["name"] == "host:3") is not False
