"""Broker connection: a redis-py client for a ``redis://``, ``rediss://`` or ``unix://`` URL.

The socket timeout is kept well above any ``XREADGROUP BLOCK`` (redis-py #2807: a BLOCK at or past the
socket timeout raises ``TimeoutError``). Retries re-send commands after a connection error, so every write
Vigil makes is idempotent: explicit stream ids for frames; the result script writes a result only when its XACK
removed the entry from the group's pending list (``workers/writer.py``).
"""

from __future__ import annotations

import logging
import re

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)
MAX_BLOCK_MS = 2_000
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
