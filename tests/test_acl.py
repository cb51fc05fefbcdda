"""The least-privilege ACL rule of deploy/redis/acl.md runs the whole pipeline: producer, worker pool, results and
status, against a real server. A command the code starts to use outside the rule fails here with NOPERM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from common.broker import EmbeddedBroker, connect
from tests.conftest import TINY_BUNDLE

pytestmark = pytest.mark.integration
VIGIL = [sys.executable, "-m", "common.cli"]
# The rule documented in deploy/redis/acl.md, with its namespace and password filled in.
RULE = ("on >{password} resetkeys ~{ns}:* resetchannels nocommands "
        "+@stream +@hash +@set +@list +@scripting +@connection +del +exists +time -@dangerous")


def test_a_least_privilege_user_runs_the_whole_pipeline(embedded_broker: EmbeddedBroker, small_video: Path) -> None:
    ns, user, password = f"acl{uuid.uuid4().hex[:8]}", f"vigil-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    admin = connect(embedded_broker.url)
    admin.execute_command("ACL", "SETUSER", user, *RULE.format(password=password, ns=ns).split())
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(REDIS_URL=f"redis://{user}:{password}@127.0.0.1:{embedded_broker.port}/0", VIGIL_NAMESPACE=ns,
               VIGIL_BUNDLE=str(TINY_BUNDLE), VIGIL_LOG_LEVEL="WARNING", VIGIL_MAX_WAIT_MS="5")

    def vigil(*args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*VIGIL, *args], env=env, capture_output=True, text=True, timeout=90)
        assert out.returncode == 0 and "NOPERM" not in out.stderr, (args, out.stderr[-2000:])
        return out

    try:
        vigil("produce", "file", str(small_video), "--source", "cam", "--no-progress")
        vigil("work", "-n", "1", "--burst")
        results = vigil("results", "export", "--source", "cam").stdout.splitlines()
        assert sorted(json.loads(line)["seq"] for line in results) == list(range(60))
        [status] = json.loads(vigil("status", "--json").stdout)
        assert status["counters"]["processed"] == 60
        denied = subprocess.run([*VIGIL, "produce", "file", str(small_video), "--source", "cam", "--no-progress"],
                                env={**env, "VIGIL_NAMESPACE": "other"}, capture_output=True, text=True, timeout=60)
        assert denied.returncode == 5 and "NoPermissionError" in denied.stderr  # keys outside its namespace
    finally:
        admin.acl_deluser(user)
        for key in admin.scan_iter(match=f"{ns}:*"):
            admin.delete(key)
