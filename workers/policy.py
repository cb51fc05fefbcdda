"""Per-source delivery policy, read from each source's meta hash and cached.

A camera producer writes ``mode=live`` and ``max_age_ms`` into its meta hash (docs/results-schema.md). For a
live source a frame older than that when a worker decodes it is not classified: it is acked as *stale*
(``dropped_stale``). File sources (no ``mode``, or ``mode=file``) are lossless and never go stale. The hash is
re-read every ``REFRESH_S`` per source, so a camera restarted with another max age is followed within seconds
at the cost of one HMGET per source per refresh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from common.streams import SourceKeys

REFRESH_S = 2.0


@dataclass(frozen=True)
class SourcePolicy:
    live: bool = False
    max_age_s: float = 0.0  # live sources only: older frames are stale

    def is_stale(self, captured_at: float, now: float) -> bool:
        return self.live and now - captured_at > self.max_age_s

    def origin(self, captured_at: float, produced_at: float) -> float:
        """Start of a frame's capture-to-result latency: capture for cameras, production for files."""
        return captured_at if self.live else produced_at


FILE = SourcePolicy()


class SourcePolicies:
    def __init__(self, client: redis.Redis, namespace: str, default_max_age_ms: int) -> None:
        self.client = client
        self.namespace = namespace
        self.default_max_age_s = default_max_age_ms / 1000
        self._cache: dict[str, tuple[float, SourcePolicy]] = {}

    def get(self, source: str) -> SourcePolicy:
        now = time.monotonic()
        cached = self._cache.get(source)
        if cached is not None and now - cached[0] < REFRESH_S:
            return cached[1]
        policy = self._read(source)
        self._cache[source] = (now, policy)
        return policy

    def _read(self, source: str) -> SourcePolicy:
        reply: Any = self.client.hmget(SourceKeys(self.namespace, source).meta, ["mode", "max_age_ms"])
        mode, max_age = reply
        if mode != b"live":
            return FILE
        try:
            max_age_s = int(max_age) / 1000 if max_age else self.default_max_age_s
        except ValueError:
            max_age_s = self.default_max_age_s
        return SourcePolicy(live=True, max_age_s=max_age_s)
