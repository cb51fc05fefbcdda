"""Publishing of a live source (camera): newest frames win, the stream stays short, every drop is counted.

One Lua script per frame, atomic with the workers' reads and acks (docs/cameras.md, contract of issue 4):
XADD with an auto id and HINCRBY ``produced``; then, while more than ``maxlen`` entries are still undelivered
to the group, XDEL the oldest undelivered ones and count them as ``dropped_trimmed``; then XTRIM MINID the
entries that are fully done (delivered and acked). A pending (delivered, unacked) entry is never deleted.

Redis cannot count the entries after an id without reading their payloads (XRANGE), so the script keeps the
ids of not-yet-delivered entries in a list next to the stream (``<frames>:undelivered``, same hash slot): ids
up to the group's last-delivered-id are popped from its head, and its length is the undelivered count.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from typing import Any

import redis

from common import scripts
from common.errors import ConfigError
from common.schemas import FRAME_FIELD, Frame
from common.streams import GROUP, SourceKeys, check_source, events_key, registry_key

log = logging.getLogger(__name__)
EVENTS_MAXLEN = 10_000
SEQ_RETRIES = 20  # publish: numbering a frame again after another producer of the source took its seq





class LivePublisher:
    """One camera's stream, meta hash and state. Thread-safe (redis-py clients are)."""

    def __init__(self, client: redis.Redis, namespace: str, source: str, maxlen: int) -> None:
        self.client = client
        self.namespace = namespace
        self.keys = SourceKeys(namespace, check_source(source))
        self.undelivered = self.keys.undelivered
        self.maxlen = maxlen
        self.state = ""
        self._script = scripts.register(client, "live_add")
        self._open = scripts.register(client, "live_open")
        self.token = secrets.token_hex(6)  # this publisher's, in the key of each add (live_add.lua)

    def open(self, meta: dict[str, object]) -> int:
        """Register the source as live and return the next frame seq (continues after earlier runs)."""
        fields: dict[Any, Any] = {k: str(v) for k, v in meta.items()}
        fields.update(mode="live", started_at=f"{time.time():.6f}")
        reply: Any = self._open(keys=[self.keys.frames, self.keys.meta],
                                args=[GROUP, *(x for kv in fields.items() for x in kv)])
        if reply is None:
            raise ConfigError(f"source {self.keys.source!r} is a file source; give the camera another id.")
        self.state = reply.decode()
        self.client.sadd(registry_key(self.namespace), self.keys.source)
        return self.next_seq()

    def publish(self, frame: Frame) -> tuple[int, int]:
        """XADD one frame under the live cap; returns (next seq, entries trimmed by this call). Idempotent: the
        same frame sent again adds nothing. A frame whose seq another producer of the source took meanwhile is
        numbered again with the next free one (``live_add.lua``)."""
        for _ in range(SEQ_RETRIES):
            reply = self._script(keys=[self.keys.frames, self.keys.meta, self.undelivered],
                                 args=[GROUP, self.maxlen, FRAME_FIELD, frame.encode(), f"{self.token}:{frame.seq}",
                                       frame.seq])
            if len(reply) < 4:
                return int(reply[1]), int(reply[2])
            frame = dataclasses.replace(frame, seq=int(reply[1]))
        # As an error of the broker's (the camera drops frames until a publish goes through, then carries on)
        raise redis.ResponseError(f"source {self.keys.source!r}: other producers of this camera took every seq this "
                                  f"frame was given, {SEQ_RETRIES} times in a row")

    def next_seq(self) -> int:
        """The seq of the next frame: how many this source has produced (a publish whose reply was lost may have
        added its frame)."""
        return int(self.client.hget(self.keys.meta, "produced") or 0)

    def count(self, counters: dict[str, int]) -> None:
        """HINCRBY the producer's counters (captured, dropped_superseded, reconnects) and record that it is alive
        (``producer_seen``: `vigil status` tells a camera whose producer was killed), in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for name, delta in counters.items():
            if delta:
                pipe.hincrby(self.keys.meta, name, delta)
        pipe.hset(self.keys.meta, "producer_seen", f"{time.time():.3f}")
        pipe.execute()

    def set_state(self, state: str, reason: str) -> None:
        """Record the camera's state in its meta hash and append the change to the events stream."""
        previous, self.state = self.state, state
        now = f"{time.time():.6f}"
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.meta, mapping={"state": state, "state_since": now, "state_reason": reason})
        pipe.xadd(events_key(self.namespace), {"source": self.keys.source, "state": state, "previous": previous,
                                               "reason": reason, "at": now},
                  maxlen=EVENTS_MAXLEN, approximate=True)
        pipe.execute()

    def counters(self) -> dict[str, int]:
        raw = self.client.hgetall(self.keys.meta)
        names = ("captured", "produced", "dropped_superseded", "dropped_trimmed", "dropped_unpublished", "reconnects")
        return {name: int(raw.get(name.encode(), 0)) for name in names}
