"""The least-privilege ACL rule of deploy/redis/acl.md runs the whole pipeline: producers (a file and a live camera),
worker pool, results and status, against a real server. A command the code starts to use outside the rule fails
here: NOPERM, or "no permissions" for a command inside a script."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from common.broker import connect
from common.embedded import EmbeddedBroker, free_port
from common.streams import SourceKeys
from tests.helpers import REPO, TINY_BUNDLE, wait_for
from vigil_bench.simcam import MjpegServer

pytestmark = pytest.mark.integration
VIGIL = [sys.executable, "-m", "common.cli"]
# The rule documented in deploy/redis/acl.md, with its namespace and password filled in.
RULE = ("on >{password} resetkeys ~{ns}:* resetchannels nocommands +@stream +@hash +@set +@list "
        "+evalsha +eval +script|load +script|exists +@connection +del +exists +time -@dangerous")
# A refused command: "NOPERM ..." when called directly; inside a script Valkey says "ACL failure in script: User ...
# has no permissions to run the 'xtrim' command", and a live producer only logs it and carries on.
REFUSED = re.compile("NOPERM|no permissions", re.IGNORECASE)


@dataclass(frozen=True)
class AclUser:
    name: str
    ns: str
    env: dict[str, str]  # for `vigil` subprocesses that log in as the user
    admin: redis.Redis  # the default user, to look at keys without going through the rule


@pytest.fixture
def acl_user(embedded_broker: EmbeddedBroker) -> Iterator[AclUser]:
    ns, user, password = f"acl{uuid.uuid4().hex[:8]}", f"vigil-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    admin = connect(embedded_broker.url)
    admin.execute_command("ACL", "SETUSER", user, *RULE.format(password=password, ns=ns).split())
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(REDIS_URL=f"redis://{user}:{password}@127.0.0.1:{embedded_broker.port}/0", VIGIL_NAMESPACE=ns,
               VIGIL_BUNDLE=str(TINY_BUNDLE), VIGIL_LOG_LEVEL="WARNING", VIGIL_MAX_WAIT_MS="5")
    try:
        yield AclUser(user, ns, env, admin)
    finally:
        admin.acl_deluser(user)
        for key in admin.scan_iter(match=f"{ns}:*"):
            admin.delete(key)
        admin.close()


def vigil(acl: AclUser, *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*VIGIL, *args], env=acl.env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0 and not REFUSED.search(out.stderr), (args, out.stderr[-2000:])
    return out


@pytest.mark.slow
def test_a_least_privilege_user_runs_the_whole_pipeline(acl_user: AclUser, small_video: Path) -> None:
    vigil(acl_user, "produce", "file", str(small_video), "--source", "cam", "--no-progress")
    vigil(acl_user, "work", "-n", "1", "--burst")
    results = vigil(acl_user, "results", "export", "--source", "cam").stdout.splitlines()
    assert sorted(json.loads(line)["seq"] for line in results) == list(range(60))
    [status] = json.loads(vigil(acl_user, "status", "--json").stdout)
    assert status["counters"]["processed"] == 60
    denied = subprocess.run([*VIGIL, "produce", "file", str(small_video), "--source", "cam", "--no-progress"],
                            env={**acl_user.env, "VIGIL_NAMESPACE": "other"}, capture_output=True, text=True,
                            timeout=60)
    assert denied.returncode == 5 and "NoPermissionError" in denied.stderr  # keys outside its namespace


class Processes:
    """A test's long-running `vigil` processes, logged in as the ACL user. Their stderr goes to files, readable while
    they run: a live producer logs a refused command and carries on, so a timeout must show what they said."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.running: dict[subprocess.Popen[str], tuple[str, ...]] = {}

    def start(self, *args: str) -> subprocess.Popen[str]:
        with self._log(len(self.running)).open("w") as err:
            proc = subprocess.Popen([*VIGIL, *args], env=self.env, stdout=subprocess.PIPE, stderr=err, text=True)
        self.running[proc] = args
        return proc

    def stderr(self, proc: subprocess.Popen[str]) -> str:
        return self._log(list(self.running).index(proc)).read_text()

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            wait_for(predicate, timeout, what)
        except AssertionError as exc:
            said = "\n".join(f"{args}: {self.stderr(proc)[-1500:]}" for proc, args in self.running.items())
            raise AssertionError(f"{exc}\n{said}") from None

    def _log(self, index: int) -> Path:
        return self.logs / f"{index}.stderr"


@pytest.fixture
def processes(acl_user: AclUser, tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(acl_user.env, tmp_path)
    yield procs
    for proc in procs.running:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.slow
def test_a_least_privilege_user_runs_a_live_camera_through_its_cap(
        acl_user: AclUser, processes: Processes, small_video: Path) -> None:
    """The camera's script over its cap with no reader (RPUSH, LLEN, LPOP, XDEL, HINCRBY), then with a worker
    reading (XINFO GROUPS, LINDEX, XPENDING, XTRIM MINID), and the worker's live branch (capped results)."""
    maxlen, keys = 2, SourceKeys(acl_user.ns, "cam")

    def meta(name: str) -> int:
        return int(acl_user.admin.hget(keys.meta, name) or 0)

    with MjpegServer(small_video, free_port(), fps=25) as server:
        camera = processes.start("produce", "camera", server.url, "--source", "cam", "--fps", "10",
                                 "--maxlen", str(maxlen), "--max-age-ms", "60000",  # none stale: processed or trimmed
                                 "--json")
        processes.wait_for(lambda: meta("dropped_trimmed") >= 5, 20, "frames over the cap deleted, no worker reading")
        worker = processes.start("work", "-n", "1", "--burst", "--burst-idle", "1")  # exits 1 s after the camera
        processes.wait_for(lambda: meta("processed") >= 15, 30, "the camera's frames processed while it runs")
        camera.send_signal(signal.SIGTERM)
        camera_out, _ = camera.communicate(timeout=15)
    worker.communicate(timeout=30)
    for proc in (camera, worker):
        assert proc.returncode == 0 and not REFUSED.search(processes.stderr(proc)), processes.stderr(proc)[-2000:]

    report = json.loads(camera_out)
    [status] = json.loads(vigil(acl_user, "status", "--json").stdout)
    produced, processed, trimmed = (status["counters"]["produced"], status["counters"]["processed"],
                                    status["dropped"]["trimmed"])
    assert report["produced"] == produced and report["dropped_trimmed"] == trimmed >= 5
    assert processed + trimmed == produced and status["dropped"]["stale"] == 0 and status["dead"] == 0
    assert status["entries"] < processed  # XTRIM took the acked entries (XDEL only takes undelivered ones)
    results = vigil(acl_user, "results", "export", "--source", "cam").stdout.splitlines()
    seqs = [json.loads(line)["seq"] for line in results]
    assert len(seqs) == len(set(seqs)) == processed and max(seqs) < produced


def test_a_camera_the_broker_refuses_stops_with_the_reason(acl_user: AclUser, small_video: Path) -> None:
    """A rule without a command the camera's script needs: the camera exits 5 naming the refusal and the rule to
    read, without a traceback; taken for an outage, it would keep running, drop every frame and exit 0."""
    acl_user.admin.execute_command("ACL", "SETUSER", acl_user.name, "-@list")
    with MjpegServer(small_video, free_port(), fps=25) as server:
        camera = subprocess.run([*VIGIL, "produce", "camera", server.url, "--source", "cam", "--fps", "10"],
                                env=acl_user.env, capture_output=True, text=True, timeout=60)
    assert camera.returncode == 5, camera.stderr[-2000:]
    assert "refuses a command the camera needs" in camera.stderr and "deploy/redis/acl.md" in camera.stderr
    assert "Traceback" not in camera.stderr


def test_a_worker_pool_the_broker_refuses_stops_instead_of_respawning(acl_user: AclUser, small_video: Path) -> None:
    """A rule without XACK (refused inside the publish script): the pool stops within 30 s with exit 5, naming
    the command and the rule, without a traceback or a respawn (every respawn would be refused again); the
    frames stay pending for a fixed rule."""
    vigil(acl_user, "produce", "file", str(small_video), "--source", "cam", "--no-progress")
    acl_user.admin.execute_command("ACL", "SETUSER", acl_user.name, "-xack")
    started = time.monotonic()
    pool = subprocess.run([*VIGIL, "work", "-n", "2"], env=acl_user.env, capture_output=True, text=True, timeout=60)
    assert pool.returncode == 5, pool.stderr[-2000:]
    assert time.monotonic() - started < 30 and "respawning" not in pool.stderr
    assert "refuses a command the workers need" in pool.stderr and "'xack'" in pool.stderr
    assert "deploy/redis/acl.md" in pool.stderr and "Traceback" not in pool.stderr
    frames = SourceKeys(acl_user.ns, "cam").frames
    assert acl_user.admin.xpending(frames, "workers")["pending"] > 0  # not acked, nothing lost: there for a fixed rule


def test_a_producer_the_broker_refuses_names_the_command_and_the_rule(acl_user: AclUser, small_video: Path) -> None:
    """A rule without scripts: the producer's first script is refused, and it exits 5 naming the refused command
    and the rule to give the user, without a traceback."""
    acl_user.admin.execute_command("ACL", "SETUSER", acl_user.name, "-evalsha", "-eval")
    out = subprocess.run([*VIGIL, "produce", "file", str(small_video), "--source", "cam", "--no-progress"],
                         env=acl_user.env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 5, out.stderr[-2000:]
    assert "'evalsha'" in out.stderr and "deploy/redis/acl.md" in out.stderr and "Traceback" not in out.stderr


def test_the_rule_is_the_documented_one_and_keeps_server_wide_script_commands_out(acl_user: AclUser) -> None:
    """Scripts run through EVALSHA/EVAL and SCRIPT LOAD/EXISTS only: @scripting would also allow SCRIPT FLUSH and
    FUNCTION LOAD/DELETE/FLUSH, which act on the whole server."""
    documented = (REPO / "deploy" / "redis" / "acl.md").read_text()
    documented = documented.replace("\\\n", " ")  # the rule's line continuation
    rule = RULE.format(password="CHANGE-ME", ns="vigil").split()
    assert " ".join(rule[3:]) in " ".join(documented.split())
    user = redis.Redis.from_url(acl_user.env["REDIS_URL"])
    try:
        assert user.eval("return 1", 0) == 1
        for command in (("SCRIPT", "FLUSH"), ("FUNCTION", "FLUSH"), ("FUNCTION", "DELETE", "lib")):
            with pytest.raises(redis.ResponseError, match=REFUSED):
                user.execute_command(*command)
    finally:
        user.close()
