"""Publish results and ack, atomically and idempotently, and count what happened in the source's meta hash.

One Lua script per source per batch: for each entry it XACKs first, and appends the result (or dead letter)
only when that XACK removed the entry from the group's pending list. A copy of the entry processed a second
time (a slow worker whose batch the janitor handed to another) finds it already acked and writes nothing; a
crash before the script runs leaves the entry pending for the janitor. Both happen inside one script, so a
result exists if and only if its entry is acked — with no per-frame state to grow. The counters follow the
same rule (HINCRBY only for entries this call acked), so ``processed``, ``dead`` and ``dropped_stale`` count
each entry at most once and the producer's ``produced`` balances against them.

Duplicate *entries* of one frame cannot occur: file producers append, in a script, only frames that continue the
stream (``producers/publisher.py``); live producers XADD once, inside their own script. All keys share the
``{source}`` hash tag (one cluster slot).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, NamedTuple

import redis

from common.streams import GROUP, SourceKeys

Kind = Literal["r", "d", "e", "s"]  # result, dead letter, end of stream, stale (live frame too old: no result)

# KEYS: frames, results, dead, meta. ARGV: group, then per entry: entry_id and a JSON array of its items,
# one per frame (a pack has several): [kind, [k1, v1, k2, v2, ...], frames]. One JSON argument per entry keeps
# client-side packing cheap; XADD still writes flat string fields. ``frames`` (default 1) is how many frames an
# item stands for: a pack that does not decode at all is one dead letter for all of them. A live source's meta
# carries results_maxlen: its results stream is capped (~, so the server trims whole nodes, cheaply).
# Returns the frames {results, dead, stale, eos} newly acked by this call.
PUBLISH_LUA = """
local cap = redis.call('HGET', KEYS[4], 'results_maxlen')
cap = cap and tonumber(cap)
local n = {0, 0, 0, 0}
for i = 2, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    for _, item in ipairs(cjson.decode(ARGV[i + 1])) do
      local kind, frames = item[1], tonumber(item[3]) or 1
      if kind == 'd' then
        redis.call('XADD', KEYS[3], '*', unpack(item[2]))
        n[2] = n[2] + frames
      elseif kind == 's' then
        n[3] = n[3] + frames
      else
        if cap then
          redis.call('XADD', KEYS[2], 'MAXLEN', '~', cap, '*', unpack(item[2]))
        else
          redis.call('XADD', KEYS[2], '*', unpack(item[2]))
        end
        if kind == 'r' then n[1] = n[1] + frames else n[4] = n[4] + frames end
      end
    end
  end
end
if n[1] > 0 then redis.call('HINCRBY', KEYS[4], 'processed', n[1]) end
if n[2] > 0 then redis.call('HINCRBY', KEYS[4], 'dead', n[2]) end
if n[3] > 0 then redis.call('HINCRBY', KEYS[4], 'dropped_stale', n[3]) end
return n
"""


class Outcome(NamedTuple):
    """What became of one frame (or, ``frames`` > 1, of a whole pack that did not decode) of an entry.

    A tuple, not a dataclass: workers make one per frame. ``encoded``, when set, is ``fields`` already flattened
    into a JSON array (``common.schemas.ResultJSON``) and ``fields`` is then not read."""

    source: str
    entry_id: str
    kind: Kind
    fields: dict[str, str]
    frames: int = 1
    encoded: str = ""


@dataclass(frozen=True)
class Tally:
    """Frames one script call newly acked for one source (re-deliveries already acked count nothing)."""

    results: int = 0
    dead: int = 0
    stale: int = 0
    eos: int = 0


class ResultWriter:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.namespace = namespace
        self._script = client.register_script(PUBLISH_LUA)

    def publish(self, outcomes: list[Outcome]) -> dict[str, Tally]:
        """Write and ack every outcome, one script call per source; returns what each call newly acked.

        Every frame of an entry must be among ``outcomes``: the entry is acked once, with all its items."""
        by_entry: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for o in outcomes:
            fields = o.encoded or json.dumps([x for kv in o.fields.items() for x in kv], ensure_ascii=False)
            by_entry[o.source][o.entry_id].append(f'["{o.kind}",{fields},{o.frames}]')
        tallies: dict[str, Tally] = {}
        for source, entries in by_entry.items():
            keys = SourceKeys(self.namespace, source)
            args: list[str] = [GROUP]
            for entry_id, items in entries.items():
                args += [entry_id, f"[{','.join(items)}]"]
            reply = self._script(keys=[keys.frames, keys.results, keys.dead, keys.meta], args=args)
            tallies[source] = Tally(*(int(x) for x in reply))
        return tallies

    def write_batch(self, outcomes: list[Outcome]) -> int:
        """Write and ack every outcome; returns how many frames were accounted for (results, eos, dead letters)."""
        return sum(t.results + t.dead + t.eos for t in self.publish(outcomes).values())
