"""Publish results and ack, atomically and idempotently.

One Lua script per source per batch: for each entry it XACKs first, and appends the result (or dead letter)
only when that XACK removed the entry from the group's pending list. A copy of the entry processed a second
time (a slow worker whose batch the janitor handed to another) finds it already acked and writes nothing; a
crash before the script runs leaves the entry pending for the janitor. Both happen inside one script, so a
result exists if and only if its entry is acked — with no per-frame state to grow. Duplicate *entries* of
one frame cannot occur: producers write deterministic ids (``1-<seq>``) and the server refuses repeats.
All keys share the ``{source}`` hash tag (one cluster slot).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import redis

from common.streams import GROUP, SourceKeys

Kind = Literal["r", "d", "e"]  # result, dead letter, end of stream

# KEYS: frames, results, dead. ARGV: group, then per entry: entry_id, kind, fields as a JSON array
# [k1, v1, k2, v2, ...] (one argument instead of ~26 keeps client-side packing cheap; XADD still writes
# flat string fields).
PUBLISH_LUA = """
local written = 0
for i = 2, #ARGV, 3 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    local target = KEYS[2]
    if ARGV[i + 1] == 'd' then target = KEYS[3] end
    redis.call('XADD', target, '*', unpack(cjson.decode(ARGV[i + 2])))
    written = written + 1
  end
end
return written
"""


@dataclass(frozen=True)
class Outcome:
    source: str
    entry_id: str
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
                args += [o.entry_id, o.kind, json.dumps([x for kv in o.fields.items() for x in kv])]
            written += int(self._script(keys=[keys.frames, keys.results, keys.dead], args=args))
        return written
