"""Lossless, resumable publishing of one source's frames.

Frames go out in packs of up to ``pack`` frames per stream entry (``common/schemas.py``); the entry id is
``<epoch>-<seq of the pack's last frame>``, so ids are deterministic: a restarted producer continues after the
stream's last frame. The meta hash keeps the run's ``epoch`` and ``produced`` (the seq after the last frame on
the stream), and two scripts keep them and the stream in step: ``file_open.lua`` agrees on them when a producer
starts and ``file_append.lua`` adds a chunk's packs only where they continue the stream. So a re-sent chunk or a
second producer of the same source never puts a frame on the stream twice, wherever their packs begin, and a
producer still running through another one's --restart writes nothing into the new run. Payloads pass through
Lua, which costs the server several times the CPU of a plain XADD per large raw frame; JPEG transport or a smaller
model input keep that small.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from common import scripts
from common.errors import BrokerError, ConfigError, Interrupted
from common.schemas import MAX_PACK_FRAMES, Frame, decode_entry, encode_entry
from common.streams import GROUP, SourceKeys, check_source, registry_key

log = logging.getLogger(__name__)
PAUSE_WARN_S = 10.0  # a producer paused this long says why, then every PAUSE_REWARN_S
PAUSE_REWARN_S = 60.0
RECENT_WRITE_S = 15.0  # another producer that wrote this recently may still be running: a warning
PACK_BYTES = 1 << 20  # a pack closes at this much pixel data even when it holds fewer than ``pack`` frames









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
                 stop: threading.Event | None = None, patience_s: float = 0.0) -> None:
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
        self._lag_trim = scripts.register(client, "file_lag_trim")
        self._open = scripts.register(client, "file_open")
        self._append = scripts.register(client, "file_append")
        self._end = scripts.register(client, "file_end")
        self._token, self._calls = uuid.uuid4().hex, 0  # names each append call (file_append.lua)
        self.epoch = 0  # set by open()
        self.stop = stop  # set: a paused send gives up (Interrupted) instead of waiting for the workers
        self.on_pause: Callable[[bool], None] | None = None  # told when a pause for the workers begins and ends
        self.owner = f"{socket.gethostname()}:{os.getpid()}"  # in the meta hash while this producer writes
        self.patience_s = patience_s  # how long a send waits out an unreachable broker (``_patiently``)

    def open(self, path: str, restart: bool, identity: dict[str, str] | None = None) -> int:
        """Register the source and its group; return the first seq still to send (resume point).

        ``identity``: what must not change between a run and its resume (``file_producer.identity``: sampling,
        model input, the file's content); a stored value that differs refuses the resume, since frame seqs would
        no longer line up with what is on the stream (gaps, a lost end-of-stream marker)."""
        self._warn_if_another_producer()
        # A stream with entries keeps its epoch (a resume); a new one (or one --restart deleted) takes the server's
        # clock, which has moved on since any earlier run began. A worker still holding a batch of the run before a
        # --restart then finds its ids absent: its XACK removes nothing, so it neither acks the new run's entry
        # with the same seq nor writes its old result for it.
        # Two producers opening a new stream at once agree on its epoch (the first one's).
        fields = identity or {}
        now = time.time()
        reply: Any = self._open(
            keys=[self.keys.frames, self.keys.meta, *(k for k in self.keys.all() if k not in (self.keys.frames,
                                                                                  self.keys.meta))],
            args=[_server_ms(self.client), int(restart), GROUP, path, len(fields),
                  *(x for kv in fields.items() for x in kv),
                  "producer", self.owner, "started_at", f"{now:.6f}", "producer_seen", f"{now:.3f}"])
        if int(reply[0]) == 0:
            raise self._refusal(reply[1].decode(), reply[2].decode(), path)
        self.client.sadd(registry_key(self.namespace), self.keys.source)
        self.epoch = int(reply[1])
        return int(reply[2])

    def _refusal(self, kind: str, detail: str, path: str) -> ConfigError:
        source = self.keys.source
        if kind == "live":
            return ConfigError(f"source {source!r} is a live camera's stream; pass --source NAME to send this file "
                               "to its own source.")
        if kind == "path":
            return ConfigError(f"source {source!r} was produced from {detail}, not {path}. Pass --source NAME for a "
                               "new source or --restart to start over.")
        if kind == "identity":
            return ConfigError(f"source {source!r} was produced differently before ({detail}), so its frames on the "
                               "stream would not line up with this run's. Run it as before, or pass --restart to "
                               "start over, or --source NAME for a new source.")
        return ConfigError(f"source {source!r}: stream {self.keys.frames} holds entries a file producer did not write "
                           f"({detail}), so there is no resume point. Pass --source NAME to send this file to its own "
                           "source, or --restart to delete that stream and start over.")

    def _warn_if_another_producer(self) -> None:
        """Two producers of one source each decode the whole file: no frame goes out twice (``send`` appends
        only frames that continue the stream), but one of them does its work for nothing. Say so when another
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
        self.client.hdel(self.keys.meta, f"append:{self._token}")
        if self.client.hget(self.keys.meta, "producer") == self.owner.encode():
            self.client.hdel(self.keys.meta, "producer", "producer_seen")

    def finished(self) -> bool:
        return self.client.hget(self.keys.meta, "eos") == b"1"

    def entry_id(self, seq: int) -> str:
        return entry_id(self.epoch, seq)

    def send(self, frames: list[Frame]) -> None:
        """Append a chunk as packs in one round trip (``file_append.lua``), after waiting for the group to catch up.
        Frames the stream already holds (another producer of this source sent them) are skipped and counted."""
        if not frames:
            return
        self.wait_for_room()
        while frames:
            packs = self.packs(frames)
            self._calls += 1
            args: list[Any] = [self.epoch, f"{time.time():.3f}", self._token, self._calls]
            for pack in packs:
                fields = encode_entry(pack)
                args += [pack[0].seq, pack[-1].seq, len(fields), *(x for kv in fields.items() for x in kv)]
            reply: Any = self._patiently(self._append, keys=[self.keys.frames, self.keys.meta], args=args)
            added, last, status = int(reply[0]), int(reply[1]), reply[2]
            frames = frames[self._count_sent(packs[:added]):]
            if status == 0:
                raise self._started_over()
            if isinstance(status, bytes):
                what = "the end-of-stream marker" if frames[0].eos else f"frames {frames[0].seq}..{frames[-1].seq}"
                if status == b"gap":  # ``produced`` went back: a broker that lost its last writes (AOF, RDB)
                    raise BrokerError(f"source {self.keys.source!r}: {what} not sent: the stream's checkpoint says "
                                      f"it ends at frame {last}, before them (did the broker lose writes in a "
                                      "restart?). Run the same command again: it resumes after the stream's last "
                                      "frame.")
                raise BrokerError(f"source {self.keys.source!r}: {what} not sent: the server refused them "
                                  f"({status.decode()}); the stream holds entries past frame {last}. Pass --restart "
                                  "to start over.")
            frames = self._skip_sent(frames, last + 1)

    def _started_over(self) -> BrokerError:
        return BrokerError(f"source {self.keys.source!r} was started over (--restart, or its keys deleted) while this "
                           f"producer ran: its meta hash no longer records this run ({self.epoch}), so nothing more "
                           "was sent. Stop the other producer, or run this one again (with --restart to start over).")

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
        marker: Any = self._patiently(self.client.xrange, self.keys.frames, self.entry_id(seq), self.entry_id(seq))
        ended = -1 if marker and not decode_entry(marker[0][1])[-1].eos else \
            int(self._patiently(self._end, keys=[self.keys.frames, self.keys.meta], args=[self.epoch, seq]))
        if ended == 0:
            raise self._started_over()
        if ended != 1:
            raise BrokerError(f"source {self.keys.source!r}: the stream does not end with the end-of-stream marker "
                              f"{self.entry_id(seq)}; it holds frames this run did not send. Pass --restart.")

    def lag(self) -> int:
        """Entries not yet delivered to the group; trims, in the same step, the entries it has delivered and
        acked (``file_lag_trim.lua``)."""
        lag, trimmed = (int(x) for x in self._patiently(self._lag_trim, keys=[self.keys.frames, self.keys.meta],
                                                        args=[GROUP, self.epoch]))
        if lag < 0:
            raise self._started_over()
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
        paused = False
        try:
            while (lag := self.lag() * self._frames / self._entries) > self.high_water:
                if not paused and self.on_pause is not None:
                    self.on_pause(True)
                paused = True
                if self.stop is not None and self.stop.is_set():
                    raise Interrupted(f"source {self.keys.source}: stopped while paused for the workers; this run "
                                      f"sent {self.stats.sent} frames. Run the same command again to resume.")
                if time.monotonic() >= seen_at:  # still running, though paused (_warn_if_another_producer)
                    self._patiently(self.client.hset, self.keys.meta, "producer_seen", f"{time.time():.3f}")
                    seen_at = time.monotonic() + 1.0
                if time.monotonic() >= warn_at:
                    self._warn_paused(time.monotonic() - start, lag)
                    warn_at = time.monotonic() + PAUSE_REWARN_S
                time.sleep(0.02)
        finally:
            if paused and self.on_pause is not None:
                self.on_pause(False)
        self._room = int((self.high_water - lag) * self._entries / self._frames)
        self.stats.paused_s += time.monotonic() - start

    def _patiently(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``call``, retried while the broker is unreachable, for up to ``patience_s`` from the first failure
        (redis-py's own retries cover a few seconds; a broker restart or failover takes longer). Each call is
        safe to send twice: the append script answers a re-sent call from its record, the others only read or
        set. A refused login is not waited out, nor a stop request."""
        since: float | None = None
        while True:
            try:
                result = call(*args, **kwargs)
            except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError):
                raise
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                now = time.monotonic()
                if since is None:
                    since = now
                    if self.patience_s > 0:
                        log.warning("source %s: the broker is unreachable (%s); waiting up to %.0f s for it "
                                    "(broker_patience_s)", self.keys.source, exc, self.patience_s)
                if now - since >= self.patience_s:
                    raise
                if self.stop is not None and self.stop.is_set():
                    raise Interrupted(f"source {self.keys.source}: stopped while the broker was unreachable; this "
                                      f"run sent {self.stats.sent} frames. Run the same command again to resume.") \
                        from exc
                time.sleep(min(1.0, self.patience_s - (now - since)))
                continue
            if since is not None:
                log.warning("source %s: the broker is back after %.1f s; going on", self.keys.source,
                            time.monotonic() - since)
            return result

    def _warn_paused(self, paused_s: float, lag: float) -> None:
        """A producer waiting on workers that never come looks hung: say what it waits for."""
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
