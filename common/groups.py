"""What a source's consumer group holds: lag (never delivered), pending (delivered, not acked), consumers.
Read by the worker pool's metrics and by `vigil status`."""

from __future__ import annotations

from typing import Any

import redis

from common import scripts
from common.streams import GROUP, registry_key

UNDELIVERED_CAP = 10_000  # counting undelivered entries by hand (lag nil) stops here


def sources(client: redis.Redis, namespace: str) -> list[str]:
    """Every source registered under ``namespace``, sorted."""
    members: Any = client.smembers(registry_key(namespace))
    return sorted(m.decode() if isinstance(m, bytes) else m for m in members)


def group_state(client: redis.Redis, frames: str) -> dict[str, Any]:
    """lag (never delivered), pending (delivered, not acked) and consumer count of the workers group."""
    groups: Any = client.xinfo_groups(frames) if client.exists(frames) else []
    for group in groups:
        if group["name"].decode() == GROUP:
            lag = group.get("lag")
            if lag is None:
                undelivered = client.eval(scripts.source("count_undelivered"), 1, frames,
                                          group["last-delivered-id"], UNDELIVERED_CAP)
                lag = int(undelivered)
            return {"lag": int(lag), "pending": int(group["pending"]), "consumer_count": int(group["consumers"])}
    return {"lag": None, "pending": None, "consumer_count": 0}
