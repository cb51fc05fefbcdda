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

from common.errors import ConfigError
from common.schemas import FRAME_FIELD, Frame
from common.streams import GROUP, LUA_ENSURE_GROUP, LUA_ENTRY_IDS, SourceKeys, check_source, events_key, registry_key

log = logging.getLogger(__name__)
EVENTS_MAXLEN = 10_000
SEQ_RETRIES = 20  # publish: numbering a frame again after another producer of the source took its seq

# KEYS: frames, meta, undelivered ids. ARGV: group, maxlen, frame field, frame payload, this call's key (publisher
# token:seq), the frame's seq. Returns {id, produced, trimmed}, or {'', produced, 0, 'taken'} when the frame's seq
# is not the source's next one (another producer of the source added frames: a rolling update): the caller numbers
# it again and sends it again, so no two frames share a seq. A call whose key is the last one added is a re-send of
# the same frame (redis-py re-sends a command after a lost reply: a timeout, a dropped connection): it adds nothing
# (id ''). Keyed by publisher, not by seq: two cameras writing one source number from the same count.
LIVE_LUA = LUA_ENTRY_IDS + """
if redis.call('HGET', KEYS[2], 'last_add') == ARGV[5] then
  return {'', tonumber(redis.call('HGET', KEYS[2], 'produced')), 0}
end
local next_seq = tonumber(redis.call('HGET', KEYS[2], 'produced') or '0')
if tonumber(ARGV[6]) ~= next_seq then
  return {'', next_seq, 0, 'taken'}
end
local id = redis.call('XADD', KEYS[1], '*', ARGV[3], ARGV[4])
local produced = redis.call('HINCRBY', KEYS[2], 'produced', 1)
redis.call('HSET', KEYS[2], 'last_add', ARGV[5])
redis.call('RPUSH', KEYS[3], id)
local last = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == ARGV[1] then last = delivered end
end
if last then
  while true do
    local head = redis.call('LINDEX', KEYS[3], 0)
    if not head or not le(head, last) then break end
    redis.call('LPOP', KEYS[3])
  end
end
local trimmed = 0
local maxlen = tonumber(ARGV[2])
while redis.call('LLEN', KEYS[3]) > maxlen do
  trimmed = trimmed + redis.call('XDEL', KEYS[1], redis.call('LPOP', KEYS[3]))
end
if trimmed > 0 then redis.call('HINCRBY', KEYS[2], 'dropped_trimmed', trimmed) end
if last and last ~= '0-0' then
  local ms, seq = split(last)
  local minid = string.sub(last, 1, string.find(last, '-', 1, true) - 1) .. '-' .. string.format('%d', seq + 1)
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
  if pending[1] > 0 and not le(minid, pending[2]) then minid = pending[2] end
  redis.call('XTRIM', KEYS[1], 'MINID', minid)
end
return {id, produced, trimmed}
"""


# KEYS: frames, meta. ARGV: group, then the meta fields to set. One step, like a file producer's open (OPEN_LUA in
# producers/publisher.py): a file producer's open can no longer fall between the check and the record, which left
# one source both live and a file's (helper-25's review). Returns the previous camera state ('' if none), or nil
# for a file source.
LIVE_OPEN_LUA = LUA_ENSURE_GROUP + """
if redis.call('HEXISTS', KEYS[2], 'path') == 1 then return nil end
ensure_group(KEYS[1], ARGV[1])
local state = redis.call('HGET', KEYS[2], 'state') or ''
redis.call('HSET', KEYS[2], unpack(ARGV, 2, #ARGV))
return state
"""


class LivePublisher:
    """One camera's stream, meta hash and state. Thread-safe (redis-py clients are)."""

    def __init__(self, client: redis.Redis, namespace: str, source: str, maxlen: int) -> None:
        self.client = client
        self.namespace = namespace
        self.keys = SourceKeys(namespace, check_source(source))
        self.undelivered = self.keys.undelivered
        self.maxlen = maxlen
        self.state = ""
        self._script = client.register_script(LIVE_LUA)
        self._open = client.register_script(LIVE_OPEN_LUA)
        self.token = secrets.token_hex(6)  # this publisher's, in the key of each add (LIVE_LUA)

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
        numbered again with the next free one (``LIVE_LUA``)."""
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
