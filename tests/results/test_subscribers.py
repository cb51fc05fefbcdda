"""The example subscribers (examples/subscribers: Node.js without packages, sh + redis-cli) read a real pipeline's
results stream exactly as Python's ``read_results`` does: the claim that any language can read the results."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common.broker import connect
from common.embedded import EmbeddedBroker, free_port
from common.schemas import Result
from common.streams import SourceKeys
from tests.helpers import REPO, produce, start_workers
from vigil_results.reader import read_results

pytestmark = pytest.mark.integration
HERE = REPO / "examples" / "subscribers"
SUBSCRIBERS = ["node", "sh"]
Triple = tuple[str, str, float]


def command(kind: str, url: str, namespace: str, *extra: str) -> list[str]:
    """The command line of one subscriber; skips the test when its interpreter is not on PATH."""
    tool = {"node": "node", "sh": "redis-cli"}[kind]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not on PATH")
    script = [tool, str(HERE / "subscriber.mjs")] if kind == "node" else ["sh", str(HERE / "subscriber.sh")]
    return [*script, "--url", url, "--namespace", namespace, "--source", "cam", *extra]


def printed(kind: str, stdout: str) -> list[Triple]:
    """(frame_id, label, score) of every line a subscriber printed, in its order."""
    if kind == "node":
        return [(r["frame_id"], r["label"], r["score"]) for r in map(json.loads, stdout.splitlines())]
    rows = [line.split("\t") for line in stdout.splitlines()]
    return [(f"cam:{seq}", label, float(score)) for seq, label, score in rows]


def expected(client: redis.Redis, namespace: str) -> list[Triple]:
    return [(r.frame_id, r.label, r.score) for r in read_results(client, namespace, "cam")]


def run_pipeline(env: dict[str, str], video: Path) -> None:
    produce(env, video)
    workers = start_workers(env, "--burst")
    assert workers.wait(60) == 0, workers.stderr.read() if workers.stderr else ""


def finish(sub: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    try:
        return sub.communicate(timeout=timeout)
    finally:
        sub.kill()
        sub.wait()


def assert_same_results(kind: str, out: str, err: str, client: redis.Redis, namespace: str) -> None:
    lines = printed(kind, out)
    want = expected(client, namespace)
    assert len(want) == 60 and len(lines) == 60, err  # one line per frame, no duplicates
    assert sorted(lines) == sorted(want)
    assert "end of stream: source cam, 60 frames" in err


@pytest.mark.slow
@pytest.mark.parametrize("kind", SUBSCRIBERS)
def test_subscriber_reads_a_finished_run(kind, pipeline_env, redis_url, client, namespace, small_video) -> None:
    run_pipeline(pipeline_env, small_video)
    sub = subprocess.run(command(kind, redis_url, namespace, "--until-eos"), capture_output=True, text=True,
                         timeout=60)
    assert sub.returncode == 0, sub.stderr
    assert_same_results(kind, sub.stdout, sub.stderr, client, namespace)
    pending = client.xpending(SourceKeys(namespace, "cam").results, "subscriber")
    assert pending["pending"] == 0  # every entry acked


@pytest.mark.parametrize("kind", SUBSCRIBERS)
def test_subscriber_started_before_the_producer(kind, pipeline_env, redis_url, client, namespace,
                                               small_video) -> None:
    """It creates the stream and its group (MKSTREAM), blocks, and wakes for the results as workers write them."""
    sub = subprocess.Popen(command(kind, redis_url, namespace, "--until-eos", "--group", "late-reader"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    key = SourceKeys(namespace, "cam").results
    try:
        wait_for_group(client, key, "late-reader", sub)
        run_pipeline(pipeline_env, small_video)
    finally:
        out, err = finish(sub)
    assert sub.returncode == 0, err
    assert_same_results(kind, out, err, client, namespace)


@pytest.mark.slow
@pytest.mark.parametrize("kind", SUBSCRIBERS)
def test_consumers_sharing_a_group_all_exit(kind, pipeline_env, redis_url, client, namespace, small_video) -> None:
    """--until-eos ends a consumer that did not itself read the end-of-stream entry (the other consumer of a
    shared group, or an earlier run with the same group, had it): each exits 0, the results split between them,
    none twice, rather than waiting for ever."""
    run_pipeline(pipeline_env, small_video)
    cmds = [command(kind, redis_url, namespace, "--until-eos", "--group", "shared", "--consumer", name)
            for name in ("a", "b")]
    subs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in cmds]
    outs = [finish(sub) for sub in subs]
    assert [sub.returncode for sub in subs] == [0, 0], [err for _, err in outs]
    lines = [line for out, _ in outs for line in printed(kind, out)]
    assert sorted(lines) == sorted(expected(client, namespace)) and len(lines) == 60  # split, none twice
    again = subprocess.run(cmds[0], capture_output=True, text=True, timeout=60)  # every entry already acked
    assert again.returncode == 0 and again.stdout == "", again.stderr


def wait_for_group(client: redis.Redis, key: str, group: str, sub: subprocess.Popen[str]) -> None:
    for _ in range(400):
        if sub.poll() is not None:
            raise AssertionError(f"subscriber exited early: {sub.communicate()}")
        if client.exists(key) and any(g["name"].decode() == group for g in client.xinfo_groups(key)):
            return
        time.sleep(0.05)
    raise AssertionError(f"group {group} never appeared on {key}")


@pytest.mark.parametrize("kind", SUBSCRIBERS)
def test_unreachable_server_is_a_clear_error(kind) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    sub = subprocess.run(command(kind, url, "vigil"), capture_output=True, text=True, timeout=30)
    assert sub.returncode != 0 and url in sub.stderr and sub.stdout == ""


@pytest.mark.parametrize("kind", SUBSCRIBERS)
def test_bad_url_is_a_clear_error(kind) -> None:
    sub = subprocess.run(command(kind, "redis://127.0.0.1:6379/abc", "vigil"), capture_output=True, text=True,
                         timeout=30)
    assert sub.returncode == 2 and "invalid URL redis://127.0.0.1:6379/abc" in sub.stderr


@pytest.fixture
def acl_url(embedded_broker: EmbeddedBroker) -> Iterator[tuple[str, str, redis.Redis]]:
    """A URL with an ACL user and password limited to a fresh namespace, in db 3; and a db-3 admin client."""
    ns, user, password = f"sub{uuid.uuid4().hex[:8]}", f"sub-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    admin = connect(embedded_broker.url.removesuffix("/0") + "/3")
    rule = ["on", f">{password}", f"~{ns}:*", "+@stream", "+@hash", "+@connection"]
    admin.execute_command("ACL", "SETUSER", user, *rule)
    try:
        yield f"redis://{user}:{password}@127.0.0.1:{embedded_broker.port}/3", ns, admin
    finally:
        admin.acl_deluser(user)
        for key in admin.scan_iter(match=f"{ns}:*"):
            admin.delete(key)
        admin.close()


def _entry(seq: int, label: str) -> dict[str, str]:
    return Result("cam", f"cam:{seq}", seq, label, 0.5 + seq / 10, seq / 25, 1.0, 2.0, "v1", "w",
                  [(label, 0.5), ("b:c", 0.25)]).encode()


@pytest.mark.parametrize("kind", SUBSCRIBERS)
def test_auth_select_and_unknown_versions(kind, acl_url) -> None:
    """User and password from the URL, db 3, an entry of a future schema version skipped, labels with spaces."""
    url, ns, admin = acl_url
    key = SourceKeys(ns, "cam").results
    admin.xadd(key, _entry(0, "ankle boot"))
    admin.xadd(key, {"v": "2", "type": "result", "frame_id": "cam:1", "seq": "1", "label": "new"})
    admin.xadd(key, _entry(1, "coat"))
    admin.xadd(key, Result("cam", "cam:2", 2, type="eos").encode())
    admin.hset(SourceKeys(ns, "cam").meta, mapping={"processed": 1, "dead": 1})  # as workers count them
    sub = subprocess.run(command(kind, url, ns, "--until-eos"), capture_output=True, text=True, timeout=30)
    assert sub.returncode == 0, sub.stderr
    assert printed(kind, sub.stdout) == [("cam:0", "ankle boot", 0.5), ("cam:1", "coat", 0.6)]
    assert "schema version" in sub.stderr and "end of stream: source cam, 2 frames" in sub.stderr
    if kind == "node":
        first = json.loads(sub.stdout.splitlines()[0])
        assert first["topk"] == [["ankle boot", 0.5], ["b:c", 0.25]] and first["seq"] == 0 and first["v"] == "1"
    bad = subprocess.run(command(kind, url.replace("@", "x@"), ns), capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "WRONGPASS" in bad.stderr and "***@127.0.0.1" in bad.stderr
