"""Publish results and ack, atomically and idempotently.

One Lua script per source per batch: for each entry it sets ``done[frame_id]`` with HSETNX and only when that
is new appends the result (or dead letter) — then it XACKs the entry either way. A redelivered frame whose
result was already written is therefore acked without a second result, and a crash before the script runs
leaves the entry pending for the janitor. All keys share the ``{source}`` hash tag (one cluster slot).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import redis

from common.streams import GROUP, SourceKeys

Kind = Literal["r", "d", "e"]  # result, dead letter, end of stream

# ARGV: group, then per entry: entry_id, done_key, kind, fields as a JSON array [k1, v1, k2, v2, ...]
# (one argument instead of ~26 keeps client-side packing cheap; XADD still writes flat string fields).
PUBLISH_LUA = """
local written = 0
for i = 2, #ARGV, 4 do
  local entry_id, done_key, kind = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HSETNX', KEYS[3], done_key, kind) == 1 then
    local target = KEYS[2]
    if kind == 'd' then target = KEYS[4] end
    redis.call('XADD', target, '*', unpack(cjson.decode(ARGV[i + 3])))
    written = written + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], entry_id)
end
return written
"""


@dataclass(frozen=True)
class Outcome:
    source: str
    entry_id: str
    done_key: str  # frame_id, or "entry:<id>" when the frame did not decode
    kind: Kind
    fields: dict[str, str]


class ResultWriter:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.namespace = namespace
        self._script = client.register_script(PUBLISH_LUA)

    def write_batch(self, outcomes: list[Outcome]) -> int:
        """Write and ack every outcome; returns how many were new (not duplicates of earlier deliveries)."""
        by_source: dict[str, list[Outcome]] = defaultdict(list)
        for outcome in outcomes:
            by_source[outcome.source].append(outcome)
        written = 0
        for source, items in by_source.items():
            keys = SourceKeys(self.namespace, source)
            args: list[str] = [GROUP]
            for o in items:
                args += [o.entry_id, o.done_key, o.kind, json.dumps([x for kv in o.fields.items() for x in kv])]
            written += int(self._script(keys=[keys.frames, keys.results, keys.done, keys.dead], args=args))
        return written
