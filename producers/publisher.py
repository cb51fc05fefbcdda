"""Lossless, resumable publishing of one source's frames.

Frames go out in packs of up to ``pack`` frames per stream entry (``common/schemas.py``); the entry id is
``<epoch>-<seq of the pack's last frame>``, so ids are deterministic: a restarted producer reads the stream's last
id and continues after it. Each chunk is appended in a transaction guarded by the source's cursor key (``Cursor``:
the run's epoch and the seq after the last frame on the stream), so a re-sent chunk or a second producer of the
same source never puts a frame on the stream twice, wherever their packs begin, and a producer still running
through another one's --restart writes nothing into the new run.

Backpressure pauses while the group's lag (in frames: entries x the frames per entry sent so far) is above the
high-water mark. Each time the producer reads the lag it also trims the entries the workers have delivered and
acked (never an undelivered or pending one), so a file source's stream holds about high-water + in-flight frames,
not the whole video; resuming is unaffected (the stream's last-generated-id survives trimming).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from common.broker import ensure_group
from common.errors import BrokerError, ConfigError, Interrupted
from common.schemas import MAX_PACK_FRAMES, Frame, decode_entry, encode_entry
from common.streams import GROUP, LUA_ENTRY_IDS, SourceKeys, check_source, registry_key

log = logging.getLogger(__name__)
PAUSE_WARN_S = 10.0  # a producer paused this long says why, then every PAUSE_REWARN_S
PAUSE_REWARN_S = 60.0
RECENT_WRITE_S = 15.0  # another producer that wrote this recently may still be running: a warning
PACK_BYTES = 1 << 20  # a pack closes at this much pixel data even when it holds fewer than ``pack`` frames


# KEYS: frames. ARGV: group. The group's lag (entries not yet delivered) and how many entries were trimmed: those
# every group of the stream has delivered and acked (before each group's next undelivered entry and its oldest
# pending one; another group, an archiver say, keeps what it has not read, and a group rewound with XGROUP SETID
# keeps what became undelivered again). A pending entry (a worker holds it, or a dead worker did and the janitor
# will reclaim it) is never trimmed. One script, so that no delivery can happen between reading and trimming.
LAG_TRIM_LUA = LUA_ENTRY_IDS + """
local lag, ours, minid = false, nil, nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == ARGV[1] then lag, ours = f['lag'], f['last-delivered-id'] end
  local ms, seq = split(f['last-delivered-id'])
  local keep = string.format('%d-%d', ms, seq + 1)  -- the group's next undelivered entry
  if f['pending'] > 0 then
    local oldest = redis.call('XPENDING', KEYS[1], f['name'])[2]
    if lt(oldest, keep) then keep = oldest end
  end
  if not minid or lt(keep, minid) then minid = keep end
end
if not ours then return {0, 0} end
if not lag then  -- the server could not tell (entries-read unknown): count the undelivered entries
  lag = #redis.call('XRANGE', KEYS[1], '(' .. ours, '+')
end
return {lag, redis.call('XTRIM', KEYS[1], 'MINID', minid)}
"""


@dataclass(frozen=True)
class Cursor:
    """The source's cursor key (``SourceKeys.cursor``, ``<epoch>:<next seq>:<token>``): which run the stream is in,
    the seq after the last frame on it, and the token of the transaction that wrote it. Only producers write it,
    each time in the transaction that appends frames, so WATCHing it detects any other append; workers never touch
    it (they write the meta hash all the time, which would make a WATCH on that fail over and over)."""

    epoch: int
    next_seq: int
    token: str

    @classmethod
    def parse(cls, raw: Any) -> Cursor | None:
        if raw is None:
            return None
        epoch, next_seq, token = (raw.decode() if isinstance(raw, bytes) else str(raw)).split(":", 2)
        return cls(int(epoch), int(next_seq), token)

    def __str__(self) -> str:
        return f"{self.epoch}:{self.next_seq}:{self.token}"


def entry_id(epoch: int, seq: int) -> str:
    """A file source's entry id: ``<epoch>-<seq of the entry's last frame>``. Deterministic within one run of
    the stream, so a resumed producer continues after the stream's last id; the epoch (the server's clock in ms
    when the stream began) differs from run to run, so after a ``--restart`` no id of the old run names an entry
    of the new one."""
    return f"{epoch}-{seq}"


@dataclass
class PublishStats:
    sent: int = 0
    skipped: int = 0
    paused_s: float = 0.0


class SourcePublisher:
    def __init__(self, client: redis.Redis, namespace: str, source: str, high_water: int, pack: int = 1,
                 stop: threading.Event | None = None) -> None:
        if not 1 <= pack <= MAX_PACK_FRAMES:
            raise ConfigError(f"pack must be 1..{MAX_PACK_FRAMES} frames per entry, not {pack}")
        self.client = client
        self.pack = pack
        # Entries and frames sent: the lag (in entries) times their ratio is the lag in frames. Before the first
        # send (a resumed producer facing a backlog) entries are assumed full packs.
        self._entries = 1
        self._frames = pack
        self.keys = SourceKeys(namespace, check_source(source))
        self.namespace = namespace
        self.high_water = high_water
        self.stats = PublishStats()
        self._room = 0  # entries that can be sent before the lag must be read again (XINFO GROUPS)
        self._lag_trim = client.register_script(LAG_TRIM_LUA)
        self._token, self._calls = uuid.uuid4().hex, 0  # names each append transaction (``Cursor.token``)
        self.epoch = 0  # set by open()
        self.stop = stop  # set: a paused send gives up (Interrupted) instead of waiting for the workers
        self.owner = f"{socket.gethostname()}:{os.getpid()}"  # in the meta hash while this producer writes

    def open(self, path: str, restart: bool, identity: dict[str, str] | None = None) -> int:
        """Register the source and its group; return the first seq still to send (resume point).

        ``identity``: what must not change between a run and its resume (``file_producer.identity``: sampling,
        model input, the file's content); a stored value that differs refuses the resume, since frame seqs would
        no longer line up with what is on the stream (gaps, a lost end-of-stream marker)."""
        if self.client.hget(self.keys.meta, "mode") == b"live":
            raise ConfigError(
                f"source {self.keys.source!r} is a live camera's stream; pass --source NAME to send this file "
                "to its own source."
            )
        self._warn_if_another_producer()
        before = self._last_id()[0]  # the epoch of the stream --restart deletes: the new one must differ
        if restart:
            self.client.delete(*self.keys.all())
        raw_path = self.client.hget(self.keys.meta, "path")
        old_path = raw_path.decode() if isinstance(raw_path, bytes) else ""
        if old_path and old_path != path:
            raise ConfigError(
                f"source {self.keys.source!r} was produced from {old_path}, not {path}. "
                "Pass --source NAME for a new source or --restart to start over."
            )
        self._check_identity(identity or {})
        ensure_group(self.client, self.keys.frames, GROUP)
        # A stream with entries keeps its epoch (a resume); a new one (or one --restart deleted) takes the server's
        # clock, which has moved on since any earlier run began. A worker still holding a batch of the run before a
        # --restart then finds its ids absent: its XACK removes nothing, so it neither acks the new run's entry
        # with the same seq nor writes its old result for it (ids used to be 1-<seq> in every run).
        # Two producers opening a new stream at once agree on its epoch (SET NX of the cursor: the first one's).
        ms, seq = self._last_id()
        if ms:  # a resume: the stream's ids carry its epoch
            self._check_written_by_file_producers(ms, seq, bool(old_path))
            self.epoch = ms
        else:
            self.client.set(self.keys.cursor, str(Cursor(max(_server_ms(self.client), before + 1), 0, "")), nx=True)
            cursor = Cursor.parse(self.client.get(self.keys.cursor))
            assert cursor is not None
            self.epoch = cursor.epoch
        self.client.sadd(registry_key(self.namespace), self.keys.source)
        meta: dict[Any, Any] = {"path": path, "started_at": time.time(), "producer": self.owner, "epoch": self.epoch,
                                "producer_seen": f"{time.time():.3f}", **(identity or {})}
        self.client.hset(self.keys.meta, mapping=meta)
        return self.next_seq()

    def _check_written_by_file_producers(self, ms: int, seq: int, has_path: bool) -> None:
        """A stream with entries must be in the run its cursor names. Versions before the cursor (ids ``1-<seq>``,
        then ``<ms>-<seq>``) left a meta hash with the file's path: their stream's cursor is made from its last id.
        Without either, the ids are not a file producer's (a camera's stream whose meta hash was lost, another
        tool's), and resuming after its last id's "seq" would skip or repeat frames at random."""
        if has_path:
            self.client.set(self.keys.cursor, str(Cursor(ms, seq + 1, "")), nx=True)
        cursor = Cursor.parse(self.client.get(self.keys.cursor))
        if cursor is not None and cursor.epoch == ms:
            return
        raise ConfigError(
            f"source {self.keys.source!r}: stream {self.keys.frames} holds entries a file producer did not write "
            f"(its last id starts {ms}; {'no file' if not has_path else 'its cursor says ' + str(cursor)}), so there "
            "is no resume point. Pass --source NAME to send this file to its own source, or --restart to delete "
            "that stream and start over."
        )

    def _warn_if_another_producer(self) -> None:
        """Two producers of one source each decode the whole file: no frame goes out twice (``send`` appends
        only frames after the cursor), but one of them does its work for nothing. Say so when another
        one wrote recently. A warning, not a refusal: whether that one still runs (a crash, a new container,
        another host) cannot be told for sure, and refusing a legitimate resume is worse."""
        raw: Any = self.client.hmget(self.keys.meta, ["producer", "producer_seen"])
        if raw[0] is None or raw[1] is None or raw[0].decode() == self.owner:
            return
        age = time.time() - float(raw[1])
        if age < RECENT_WRITE_S:
            log.warning("source %s: producer %s wrote to it %.0f s ago. If it is still running, stop one of them: both "
                        "decode the whole file (each frame still goes out once). Or pass --source NAME to send this "
                        "file to another source.", self.keys.source, raw[0].decode(), max(0.0, age))

    def release(self) -> None:
        """This producer is done with the source (finished or stopped): no warning for the next one."""
        if self.client.hget(self.keys.meta, "producer") == self.owner.encode():
            self.client.hdel(self.keys.meta, "producer", "producer_seen")

    def _check_identity(self, identity: dict[str, str]) -> None:
        stored: list[Any] = self.client.hmget(self.keys.meta, list(identity)) if identity else []
        changed = [f"{key} was {old.decode()!r}, now {new!r}" for (key, new), old in zip(identity.items(), stored,
                                                                                          strict=True)
                   if old is not None and old.decode() != new]
        if changed:
            raise ConfigError(
                f"source {self.keys.source!r} was produced differently before ({'; '.join(changed)}), so its frames "
                "on the stream would not line up with this run's. Run it as before, or pass --restart to start "
                "over, or --source NAME for a new source."
            )

    def finished(self) -> bool:
        return self.client.hget(self.keys.meta, "eos") == b"1"

    def next_seq(self) -> int:
        ms, seq = self._last_id()
        return seq + 1 if ms else 0

    def entry_id(self, seq: int) -> str:
        return entry_id(self.epoch, seq)

    def _last_id(self) -> tuple[int, int]:
        """The stream's last-generated id as (ms, seq); (0, 0) when there is no stream."""
        if not self.client.exists(self.keys.frames):
            return 0, 0
        info = self.client.xinfo_stream(self.keys.frames)
        ms, seq = (int(x) for x in info["last-generated-id"].decode().split("-"))
        return ms, seq

    def send(self, frames: list[Frame]) -> None:
        """Append a chunk as packs in one transaction, after waiting for the group to catch up.

        Optimistic: WATCH the cursor, read it, then MULTI, the XADDs, the new cursor, EXEC. Frames before the
        cursor's next seq are already on the stream (another producer of this source sent them): skipped and
        counted, never sent twice, wherever the other one's packs begin. Another append between the read and EXEC
        aborts the transaction (WatchError) and it is tried again from a fresh read. A cursor of another epoch (a
        --restart since this run began) stops the producer before it writes anything into the new run. EXEC whose
        reply was lost (redis-py raises WatchError after a connection error while watching) is recognised on the
        next read by its token. Payloads go straight into XADD: a script would copy each one into Lua and back
        (3x the server's CPU per frame at 224x224x3)."""
        if not frames:
            return
        self.wait_for_room()
        attempt: tuple[str, list[list[Frame]]] | None = None  # the transaction sent last, until known committed
        while frames:
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.keys.cursor)
                    cursor = Cursor.parse(pipe.get(self.keys.cursor))
                    if attempt is not None and cursor is not None and cursor.token == attempt[0]:
                        frames = frames[self._count_sent(attempt[1]):]  # it went through; its reply was lost
                        attempt = None
                        continue
                    attempt = None
                    if cursor is None or cursor.epoch != self.epoch:
                        raise BrokerError(
                            f"source {self.keys.source!r} was started over (--restart, or its keys deleted) while "
                            f"this producer ran: its cursor is {cursor or 'gone'}, this run's epoch is {self.epoch}, "
                            "so nothing more was sent. Stop the other producer, or run this one again (with "
                            "--restart to start over).")
                    frames = self._skip_sent(frames, cursor.next_seq)
                    if not frames:
                        return
                    packs = self.packs(frames)
                    self._calls += 1
                    token = f"{self._token}.{self._calls}"
                    last = packs[-1][-1].seq
                    pipe.multi()
                    for pack in packs:
                        fields: dict[Any, Any] = encode_entry(pack)  # redis-py's dict type is invariant in bytes
                        pipe.xadd(self.keys.frames, fields, id=self.entry_id(pack[-1].seq))
                    pipe.set(self.keys.cursor, str(Cursor(self.epoch, last + 1, token)))
                    pipe.hset(self.keys.meta, mapping={"produced": last + 1, "producer_seen": f"{time.time():.3f}"})
                    attempt = (token, packs)
                    replies = pipe.execute(raise_on_error=False)
                except redis.WatchError:
                    continue
            refused = next((r for r in replies if isinstance(r, redis.ResponseError)), None)
            if refused is not None:  # the server checks ids too: only a writer other than a producer gets here
                what = "the end-of-stream marker" if frames[0].eos else f"frames {frames[0].seq}..{frames[-1].seq}"
                raise BrokerError(f"source {self.keys.source!r}: the server refused {what} ({refused}): the stream "
                                  "holds entries this run did not send. Pass --restart to start over.")
            self._count_sent(packs)
            return

    def _skip_sent(self, frames: list[Frame], next_seq: int) -> list[Frame]:
        """The frames at or after ``next_seq``; those before it are on the stream already (counted as skipped)."""
        rest = [frame for frame in frames if frame.seq >= next_seq]
        if skipped := len(frames) - len(rest):
            self.stats.skipped += skipped
            log.info("source %s: frames %d..%d already on the stream (another producer of this source sent them); "
                     "skipped", self.keys.source, frames[0].seq, frames[skipped - 1].seq)
        return rest

    def _count_sent(self, packs: list[list[Frame]]) -> int:
        """Account for ``packs`` appended; returns how many frames they hold."""
        frames = sum(len(pack) for pack in packs)
        self.stats.sent += frames
        self._entries += len(packs)
        self._frames += frames
        self._room -= len(packs)
        return frames

    def packs(self, frames: list[Frame]) -> list[list[Frame]]:
        """Consecutive runs of at most ``pack`` frames and ``PACK_BYTES`` of pixels; an end-of-stream marker alone."""
        out: list[list[Frame]] = []
        current: list[Frame] = []
        size = 0
        for frame in frames:
            if current and (len(current) >= self.pack or size + len(frame.data) > PACK_BYTES or frame.eos
                            or current[-1].eos or (frame.shape, frame.dtype) != (current[-1].shape, current[-1].dtype)):
                out.append(current)
                current, size = [], 0
            current.append(frame)
            size += len(frame.data)
        if current:
            out.append(current)
        return out

    def end(self, seq: int) -> None:
        """Append the end-of-stream marker and record it in the checkpoint (after checking that the stream ends
        with that marker: a refused XADD is otherwise silent)."""
        counts = self.stats.sent, self.stats.skipped  # of frames: the marker is not one
        self.send([Frame.end_of_stream(self.keys.source, seq, time.time())])
        self.stats.sent, self.stats.skipped = counts
        # The stream's last id must be the marker's; the entry itself, if still there (an interrupted run may have
        # sent it, and workers processed it and this run trimmed it since), must be the marker.
        marker: Any = self.client.xrange(self.keys.frames, self.entry_id(seq), self.entry_id(seq))
        if self.next_seq() != seq + 1 or (marker and not decode_entry(marker[0][1])[-1].eos):
            raise BrokerError(f"source {self.keys.source!r}: the stream does not end with the end-of-stream marker "
                              f"{self.entry_id(seq)}; it holds frames this run did not send. Pass --restart.")
        self.client.hset(self.keys.meta, mapping={"eos": 1, "total": seq})

    def lag(self) -> int:
        """Entries not yet delivered to the group; trims, in the same step, the entries it has delivered and
        acked (``LAG_TRIM_LUA``)."""
        lag, trimmed = (int(x) for x in self._lag_trim(keys=[self.keys.frames], args=[GROUP]))
        if trimmed:
            log.debug("source %s: trimmed %d processed entries", self.keys.source, trimmed)
        return lag

    def wait_for_room(self) -> None:
        """Pause while the group's lag in frames is above the high-water mark. The lag is read (one XINFO
        GROUPS) only once the entries sent since the last reading could have taken it there: the lag grows by at
        most one per entry sent, so with room for many entries most sends skip the round trip."""
        if self._room > 0:
            return
        start = time.monotonic()
        warn_at, seen_at = start + PAUSE_WARN_S, start + 1.0
        while (lag := self.lag() * self._frames / self._entries) > self.high_water:
            if self.stop is not None and self.stop.is_set():
                raise Interrupted(f"source {self.keys.source}: stopped while paused for the workers; this run sent "
                                  f"{self.stats.sent} frames. Run the same command again to resume.")
            if time.monotonic() >= seen_at:  # still running, though paused (_warn_if_another_producer)
                self.client.hset(self.keys.meta, "producer_seen", f"{time.time():.3f}")
                seen_at = time.monotonic() + 1.0
            if time.monotonic() >= warn_at:
                self._warn_paused(time.monotonic() - start, lag)
                warn_at = time.monotonic() + PAUSE_REWARN_S
            time.sleep(0.02)
        self._room = int((self.high_water - lag) * self._entries / self._frames)
        self.stats.paused_s += time.monotonic() - start

    def _warn_paused(self, paused_s: float, lag: float) -> None:
        """A producer waiting on workers that never come looked hung: say what it waits for."""
        groups: Any = self.client.xinfo_groups(self.keys.frames)
        consumers = next((int(g["consumers"]) for g in groups if g["name"] in (GROUP, GROUP.encode())), 0)
        who = (f"no worker has joined group {GROUP!r}: is `vigil work` running against this broker and namespace "
               f"({self.namespace!r})?" if consumers == 0 else
               f"{consumers} worker(s) in group {GROUP!r} are behind (`vigil status` shows their progress)")
        log.warning("source %s: paused for %.0f s: %.0f frames not yet read by a worker, above the high-water mark "
                    "of %d; %s", self.keys.source, paused_s, lag, self.high_water, who)


def _server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000
