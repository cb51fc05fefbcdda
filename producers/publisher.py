"""Lossless, resumable publishing of one source's frames.

Frames go out in packs of up to ``pack`` frames per stream entry (``common/schemas.py``); the entry id is
``1-<seq of the pack's last frame>``, so ids are deterministic: a restarted producer reads the stream's last id
and continues after it, and a re-sent XADD (redis-py retries after a connection error) is rejected by the
server instead of duplicating frames. Backpressure pauses while the group's lag (in frames: entries x the
frames per entry sent so far) is above the high-water mark. Each time the producer reads the lag it also trims
the entries the workers have delivered and acked (never an undelivered or pending one), so a file source's
stream holds about high-water + in-flight frames, not the whole video; resuming is unaffected (the stream's
last-generated-id survives trimming).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
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
PRODUCER_STALE_S = 15.0  # a producer that has not written for this long is taken for gone
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


def entry_id(epoch: int, seq: int) -> str:
    """A file source's entry id: ``<epoch>-<seq of the entry's last frame>``. Deterministic within one run of
    the stream, so a resumed producer continues after the stream's last id and a re-sent XADD is refused, never
    duplicated; the epoch (the server's clock in ms when the stream began) differs from run to run, so after a
    ``--restart`` no id of the old run names an entry of the new one."""
    return f"{epoch}-{seq}"


# KEYS: meta. ARGV: owner (host:pid), now (s), stale_s, gone (an owner this call may take over, or '').
# Returns {} when ARGV[1] now owns the source, else {owner, seconds since it last wrote}.
CLAIM_LUA = """
local cur = redis.call('HGET', KEYS[1], 'producer')
local age = tonumber(ARGV[2]) - tonumber(redis.call('HGET', KEYS[1], 'producer_seen') or '0')
if cur and cur ~= ARGV[1] and cur ~= ARGV[4] and age <= tonumber(ARGV[3]) then
  return {cur, tostring(age)}
end
redis.call('HSET', KEYS[1], 'producer', ARGV[1], 'producer_seen', ARGV[2])
return {}
"""


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
        self._claim_script = client.register_script(CLAIM_LUA)
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
        self._claim()
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
        self.epoch = self._last_id()[0] or max(_server_ms(self.client), before + 1)
        self.client.sadd(registry_key(self.namespace), self.keys.source)
        meta: dict[Any, Any] = {"path": path, "started_at": time.time(), "producer": self.owner,
                                "producer_seen": f"{time.time():.3f}", **(identity or {})}
        self.client.hset(self.keys.meta, mapping=meta)
        return self.next_seq()

    def _claim(self) -> None:
        """Mark the source as this producer's, or refuse it while another producer writes it (two would each
        decode the whole file, and two starting together on a new stream would take different epochs and send
        the first frames twice). Another producer counts as gone when it has not written for
        ``PRODUCER_STALE_S``, or at once when it is a process of this host that no longer exists (a crashed run,
        resumed). Check and mark are one script: two producers starting together cannot both pass."""
        owner, age = self._try_claim("")
        if owner is None:
            return
        host, _, pid = owner.rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            owner, age = self._try_claim(owner)  # take over from exactly that one, if it is still the owner
            if owner is None:
                return
        raise ConfigError(
            f"source {self.keys.source!r} is being produced right now by {owner} (it wrote {max(0.0, age):.0f} s "
            "ago); two producers of one source would each decode the whole file. Wait for it to finish or stop it "
            f"(if it is gone, this check lapses {PRODUCER_STALE_S:.0f} s after its last write), or pass --source "
            "NAME for another source."
        )

    def _try_claim(self, gone: str) -> tuple[str | None, float]:
        reply: Any = self._claim_script(keys=[self.keys.meta],
                                        args=[self.owner, f"{time.time():.3f}", PRODUCER_STALE_S, gone])
        return (reply[0].decode(), float(reply[1])) if reply else (None, 0.0)

    def release(self) -> None:
        """This producer is done with the source (finished or stopped): another may start at once."""
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
        """XADD a chunk as packs with explicit ids in one round trip, after waiting for the group to catch up."""
        if not frames:
            return
        self.wait_for_room()
        packs = self.packs(frames)
        pipe = self.client.pipeline(transaction=False)
        for pack in packs:
            fields: dict[Any, Any] = encode_entry(pack)  # redis-py's dict type is invariant in bytes vs str
            pipe.xadd(self.keys.frames, fields, id=self.entry_id(pack[-1].seq))
        pipe.hset(self.keys.meta, mapping={"produced": frames[-1].seq + 1, "producer_seen": f"{time.time():.3f}"})
        for pack, reply in zip(packs, pipe.execute(raise_on_error=False), strict=False):
            if isinstance(reply, redis.ResponseError):
                if "equal or smaller" not in str(reply):
                    raise BrokerError(f"XADD of frames {pack[0].frame_id}..{pack[-1].seq} failed: {reply}")
                log.info("frames %s..%d already on the stream (re-sent after a retry); skipped", pack[0].frame_id,
                         pack[-1].seq)
                continue
            self.stats.sent += len(pack)
            self._entries += 1
            self._frames += len(pack)
            self._room -= 1

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
        frames_sent = self.stats.sent
        self.send([Frame.end_of_stream(self.keys.source, seq, time.time())])
        self.stats.sent = frames_sent
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
            if time.monotonic() >= seen_at:  # still alive, though paused (_check_no_other_producer)
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000
