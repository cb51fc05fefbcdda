"""Lossless, resumable publishing of one source's frames.

Frame ``seq`` lives in the entry id (``1-<seq>``), so ids are deterministic: a restarted producer reads the
stream's last id and continues after it, and a re-sent XADD (redis-py retries after a connection error) is
rejected by the server instead of duplicating a frame. Backpressure pauses while the group's lag is above the
high-water mark; file streams are never trimmed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis

from common.broker import ensure_group
from common.errors import BrokerError, ConfigError
from common.schemas import FRAME_FIELD, Frame
from common.streams import GROUP, SourceKeys, check_source, registry_key

log = logging.getLogger(__name__)
ENTRY_MS = 1


def entry_id(seq: int) -> str:
    return f"{ENTRY_MS}-{seq}"


@dataclass
class PublishStats:
    sent: int = 0
    skipped: int = 0
    paused_s: float = 0.0


class SourcePublisher:
    def __init__(self, client: redis.Redis, namespace: str, source: str, high_water: int) -> None:
        self.client = client
        self.keys = SourceKeys(namespace, check_source(source))
        self.namespace = namespace
        self.high_water = high_water
        self.stats = PublishStats()

    def open(self, path: str, restart: bool) -> int:
        """Register the source and its group; return the first seq still to send (resume point)."""
        if self.client.hget(self.keys.meta, "mode") == b"live":
            raise ConfigError(
                f"source {self.keys.source!r} is a live camera's stream; pass --source NAME to send this file "
                "to its own source."
            )
        if restart:
            self.client.delete(*self.keys.all())
        raw_path = self.client.hget(self.keys.meta, "path")
        old_path = raw_path.decode() if isinstance(raw_path, bytes) else ""
        if old_path and old_path != path:
            raise ConfigError(
                f"source {self.keys.source!r} was produced from {old_path}, not {path}. "
                "Pass --source NAME for a new source or --restart to start over."
            )
        ensure_group(self.client, self.keys.frames, GROUP)
        self.client.sadd(registry_key(self.namespace), self.keys.source)
        self.client.hset(self.keys.meta, mapping={"path": path, "started_at": time.time()})
        return self.next_seq()

    def finished(self) -> bool:
        return self.client.hget(self.keys.meta, "eos") == b"1"

    def next_seq(self) -> int:
        info = self.client.xinfo_stream(self.keys.frames)
        ms, seq = (int(x) for x in info["last-generated-id"].decode().split("-"))
        return seq + 1 if ms == ENTRY_MS else 0

    def send(self, frames: list[Frame]) -> None:
        """XADD a chunk with explicit ids in one round trip, after waiting for the group to catch up."""
        if not frames:
            return
        self.wait_for_room()
        pipe = self.client.pipeline(transaction=False)
        for frame in frames:
            pipe.xadd(self.keys.frames, {FRAME_FIELD: frame.encode()}, id=entry_id(frame.seq))
        pipe.hset(self.keys.meta, "produced", frames[-1].seq + 1)
        for frame, reply in zip(frames, pipe.execute(raise_on_error=False), strict=False):
            if isinstance(reply, redis.ResponseError):
                if "equal or smaller" not in str(reply):
                    raise BrokerError(f"XADD of frame {frame.frame_id} failed: {reply}")
                log.info("frame %s already on the stream (re-sent after a retry); skipped", frame.frame_id)
                continue
            self.stats.sent += 1

    def end(self, seq: int) -> None:
        """Append the end-of-stream marker and record it in the checkpoint."""
        frames_sent = self.stats.sent
        self.send([Frame.end_of_stream(self.keys.source, seq, time.time())])
        self.stats.sent = frames_sent
        self.client.hset(self.keys.meta, mapping={"eos": 1, "total": seq})

    def lag(self) -> int:
        for group in self.client.xinfo_groups(self.keys.frames):
            if group["name"].decode() == GROUP:
                if group.get("lag") is not None:
                    return int(group["lag"])
                return int(self.client.xlen(self.keys.frames)) - int(group.get("entries-read") or 0)
        return 0

    def wait_for_room(self) -> None:
        start = time.monotonic()
        while self.lag() > self.high_water:
            time.sleep(0.02)
        self.stats.paused_s += time.monotonic() - start
