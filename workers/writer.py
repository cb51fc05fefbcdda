"""Publish results and ack, atomically and idempotently, and count what happened in the source's meta hash.

One Lua script per source per batch: for each entry it XACKs first, and appends the result (or dead letter)
only when that XACK removed the entry from the group's pending list. A copy of the entry processed a second
time (a slow worker whose batch the janitor handed to another) finds it already acked and writes nothing; a
crash before the script runs leaves the entry pending for the janitor. Both happen inside one script, so a
result exists if and only if its entry is acked — with no per-frame state to grow. The counters follow the
same rule (HINCRBY only for entries this call acked), so ``processed``, ``dead`` and ``dropped_stale`` count
each entry at most once and the producer's ``produced`` balances against them.

Duplicate *entries* of one frame cannot occur: file producers append, in a script, only frames that continue the
stream (``producers/files/publisher.py``); live producers XADD once, inside their own script. All keys share the
``{source}`` hash tag (one cluster slot).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import redis

from common import scripts
from common.streams import GROUP, SourceKeys


class Kind(StrEnum):
    """What became of a frame; the letter is what ``publish_results.lua`` reads."""

    RESULT = "r"  # a label: a result entry, counted as processed
    DEAD = "d"  # a dead letter with its reason, counted as dead
    EOS = "e"  # the end-of-stream marker, written to the results stream
    STALE = "s"  # a live frame too old to classify: counted as dropped_stale, no entry



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
        self._script = scripts.register(client, "publish_results")

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
