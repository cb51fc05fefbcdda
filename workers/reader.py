"""Micro-batches from the frames streams of every registered source: max batch (in frames) and max wait, shared
fairly among the sources that have frames, with the janitor's reclaimed entries first (``workers/janitor.py``)."""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import redis

from common import scripts
from common.broker import ensure_group
from common.schemas import entry_frames
from common.streams import GROUP, SourceKeys, registry_key
from workers.entry import PACK_GUESS, Entry, frames_in
from workers.janitor import Janitor

log = logging.getLogger(__name__)
REFRESH_S = 0.1  # how often the registry's size (SCARD) is checked; SMEMBERS only when it changed
IDLE_BLOCK_MS = 100  # an idle worker wakes this often, so a new source is picked up within ~0.1 s
POLL_S = 0.001  # while a batch fills (at most max_wait_ms), poll this often






def _unique(entries: list[Entry]) -> list[Entry]:
    """One copy of each entry, in first-seen order, with the highest delivery count seen: the janitor may
    reclaim an entry this reader still holds in its carry (its own, idle past claim_idle_ms), and one entry must
    never be processed twice in one batch."""
    best: dict[tuple[str, str], Entry] = {}
    for e in entries:
        key = (e.source, e.entry_id)
        if key not in best or e.deliveries > best[key].deliveries:
            best[key] = e
    return list(best.values())


@dataclass(frozen=True)
class ReadPolicy:
    max_batch: int = 32
    max_wait_ms: int = 20
    per_source_cap: int = 32
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    # The janitor deletes consumers idle this long that own no pending entry (killed workers cannot leave their
    # group). Redis 7.0 counts idle from a consumer's last delivery, not its last read, so a live worker without
    # work can go too; its next read re-creates it.
    forget_idle_ms: int = 600_000


@dataclass(frozen=True)
class BurstState:
    any_source: bool
    settled: bool  # nothing undelivered or pending in any source
    not_ended: tuple[str, ...]  # sources without an end-of-stream marker
    # Entries the group has read from each frames stream (XINFO GROUPS entries-read; not XLEN, which file
    # producers' trimming lowers): while settled, a change means new entries came since.
    lengths: tuple[int, ...]

    @property
    def drained(self) -> bool:
        return self.any_source and self.settled and not self.not_ended


class BatchReader:
    def __init__(self, client: redis.Redis, namespace: str, consumer: str, policy: ReadPolicy) -> None:
        self.client = client
        self.namespace = namespace
        self.consumer = consumer
        self.policy = policy
        self.sources: dict[str, SourceKeys] = {}
        self._by_stream: dict[bytes, str] = {}
        self._refreshed = 0.0
        self._carry: list[Entry] = []  # read past this batch's limits (COUNT is per stream); first in the next
        self._busy = 1  # streams that had entries in the last read: COUNT is shared among them
        # Frames per entry last seen on each source (packs): COUNT is in entries, batches are in frames. A file
        # source not read yet is assumed to send full packs, so a first read fetches too little, not too much.
        self._per_entry: dict[str, float] = {}
        self.janitor = Janitor(client, consumer, policy)
        self._leave = scripts.register(client, "leave_group")

    def next_batch(self) -> list[Entry]:
        """Entries holding up to max_batch frames (at least one entry, even a bigger pack); waits at most
        max_wait_ms after the first one arrives (empty: idle)."""
        self._refresh_sources()
        batch, self._carry = self._carry + self.janitor.reclaim_due(self.sources, self._per_entry), []
        deadline = time.monotonic() + self.policy.max_wait_ms / 1000 if batch else None
        while frames_in(batch) < self.policy.max_batch:
            if deadline is None:  # idle: block until something arrives (a new entry wakes BLOCK at once)
                got = self._read(batch, min(self.policy.block_ms, IDLE_BLOCK_MS))
                if not got:
                    break
                deadline = time.monotonic() + self.policy.max_wait_ms / 1000
            else:
                # Filling a started batch: poll without BLOCK. The server resolves BLOCK timeouts on its cron
                # tick (hz 10: 100 ms), so "BLOCK 5" would hold a live frame ~100 ms instead of 5 ms.
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                got = self._read(batch, None)
                if not got:
                    time.sleep(min(left, POLL_S))
                    continue
            batch += got
        return self._limit(_unique(batch))

    def _limit(self, batch: list[Entry]) -> list[Entry]:
        """Keep at most max_batch frames and per_source_cap per source, entries taken round-robin across sources
        (so two flooding cameras share a batch instead of taking turns); carry the rest, in order, to the next.
        A pack bigger than the limits still goes out alone: a batch always makes progress."""
        position: Counter[str] = Counter()
        ranked = []  # (an entry's position among its source's entries in this batch, index)
        for i, entry in enumerate(batch):
            ranked.append((position[entry.source], i))
            position[entry.source] += 1
        cap, total, taken = self.policy.per_source_cap, 0, Counter[str]()
        chosen: set[int] = set()
        held: set[str] = set()  # a source with an entry carried over: its later entries wait too (order kept)
        for _rank, i in sorted(ranked):
            entry = batch[i]
            if entry.source in held or (chosen and (total + entry.frames > self.policy.max_batch
                                                    or taken[entry.source] + entry.frames > cap)):
                held.add(entry.source)
                continue
            chosen.add(i)
            total += entry.frames
            taken[entry.source] += entry.frames
        self._carry += [e for i, e in enumerate(batch) if i not in chosen]
        return [e for i, e in enumerate(batch) if i in chosen]

    def release(self) -> list[Entry]:
        """Entries read but not yet handed out (to finish them before shutting down)."""
        out, self._carry = self._carry, []
        return out

    def _read(self, batch: list[Entry], block: int | None) -> list[Entry]:
        taken: Counter[str] = Counter()
        for e in batch:
            taken[e.source] += e.frames
        cap = self.policy.per_source_cap
        open_sources = [s for s in self.sources if taken[s] < cap]
        if not open_sources:
            time.sleep(min(block or 1, 200) / 1000)
            return []
        share = -(-(self.policy.max_batch - frames_in(batch)) // min(self._busy, len(open_sources)))  # frames
        # COUNT is in entries and one value per XREADGROUP: sources whose entries hold different numbers of
        # frames (a camera's 1, a file's pack of 16) are read by separate calls, pipelined in one round trip.
        counts = {s: max(1, int(min(share, cap - taken[s]) // self._per_entry.get(s, PACK_GUESS)))
                  for s in open_sources}
        calls: dict[int, dict[Any, Any]] = defaultdict(dict)
        for s in open_sources:
            calls[counts[s]][self.sources[s].frames] = ">"
        try:
            if len(calls) == 1:
                [(count, streams)] = calls.items()
                replies: list[Any] = [self.client.xreadgroup(GROUP, self.consumer, streams, count=count,
                                                             block=block)]
            else:
                pipe = self.client.pipeline(transaction=False)
                for count, streams in calls.items():
                    pipe.xreadgroup(GROUP, self.consumer, streams, count=count)
                replies = pipe.execute()
                if block is not None and not any(replies):  # idle: one blocking call over every stream wakes
                    every = {k: v for streams in calls.values() for k, v in streams.items()}  # on the first entry
                    replies = [self.client.xreadgroup(GROUP, self.consumer, every, count=min(calls), block=block)]
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("a frames stream lost its group (deleted/restarted source); re-registering")
            self._refresh_sources(force=True)
            return []
        streams_read = [item for reply in replies for item in reply or []]
        got = [Entry(self._source(stream), eid.decode(), fields, 1, entry_frames(fields))
               for stream, entries in streams_read for eid, fields in entries]
        if got:  # an empty poll says nothing about how many streams are busy or how big their entries are
            self._busy = len(streams_read)
            self._learn(got)
        return got

    def _learn(self, got: list[Entry]) -> None:
        by_source: dict[str, list[int]] = {}
        for e in got:
            by_source.setdefault(e.source, []).append(e.frames)
        for source, sizes in by_source.items():
            self._per_entry[source] = max(1.0, sum(sizes) / len(sizes))

    def _source(self, stream: bytes) -> str:
        return self._by_stream[stream]

    def _refresh_sources(self, force: bool = False) -> None:
        """Pick up newly registered sources (groups are created once per source, not on every refresh)."""
        if not force and time.monotonic() - self._refreshed < REFRESH_S:
            return
        self._refreshed = time.monotonic()
        if not force and int(self.client.scard(registry_key(self.namespace))) == len(self.sources):
            return  # the registry only grows: same size, same members
        members: Any = self.client.smembers(registry_key(self.namespace))
        known, self.sources = self.sources, {}
        for raw in members:
            name = raw.decode()
            keys = known.get(name) if not force else None
            if keys is None:
                keys = SourceKeys(self.namespace, name)
                ensure_group(self.client, keys.frames, GROUP)
                if name not in self._per_entry and self.client.hget(keys.meta, "mode") == b"live":
                    self._per_entry[name] = 1.0  # cameras send one frame per entry
            self.sources[name] = keys
        self._by_stream = {k.frames.encode(): s for s, k in self.sources.items()}

    def leave(self) -> None:
        """At exit: delete this consumer from the group of every known source, so that `vigil status` lists live
        workers only. XGROUP DELCONSUMER drops a consumer's pending entries, so where it still owns some it stays
        (another worker's janitor reclaims them); check and delete are one script (two workers that share a name,
        hostname:pid in containers, cannot slip an entry in between). Best effort: a broker error is logged."""
        for source, keys in self.sources.items():
            try:
                if not int(self._leave(keys=[keys.frames], args=[GROUP, self.consumer])):
                    log.warning("consumer %s still owns pending entries of %s: kept in the group", self.consumer,
                                source)
            except redis.RedisError as exc:  # NOGROUP: the source was deleted meanwhile, nothing to leave
                if "NOGROUP" not in str(exc):
                    log.warning("could not leave the group of %s: %s", source, exc)

    def burst_state(self) -> BurstState:
        """Where the registered sources stand, for burst mode."""
        self._refresh_sources(force=True)
        settled, not_ended, counts = True, [], []
        for source, keys in sorted(self.sources.items()):
            if self.client.hget(keys.meta, "eos") != b"1":
                not_ended.append(source)
            for group in self.client.xinfo_groups(keys.frames):
                if group["name"].decode() == GROUP:
                    settled = settled and (group.get("lag") or 0) + group["pending"] == 0
                    read = group.get("entries-read")  # None when the server cannot tell: the length will do
                    counts.append(int(read) if read is not None else int(self.client.xlen(keys.frames)))
        return BurstState(bool(self.sources), settled, tuple(not_ended), tuple(counts))
