"""Supervisor of N spawned worker processes: respawns crashed children with backoff, forwards shutdown.

First SIGTERM/SIGINT: children drain (finish the batch, ack) and the pool exits 0. Second: kill them, exit now.
In burst mode a child that exits 0 has drained the streams and is not replaced, and a slot whose child fails
BURST_MAX_FAILURES times in a row (no healthy run between) ends the run: the pool drains the other children and
exits 8 (``WorkerError``), so that a batch job whose broker is gone ends. Outside burst mode a failing child is
respawned for ever, with backoff, as a supervised service should be; but a child the broker refuses a command
(an ACL rule lacks it: exit code ``ChildExit.REFUSED``) stops the pool, which exits 5 (``BrokerError``), and so does a
child that cannot load the bundle (moved or deleted since the pool started: ``ChildExit.BUNDLE``; exit 4): every respawn
would fail the same way. A child that lost the broker (``ChildExit.UNREACHABLE``, after redis-py's retries) is respawned
within OUTAGE_MAX_BACKOFF_S, so that the pool is back soon after the broker is; those exits do not count against
the child's own failures. Children die with the pool (PR_SET_PDEATHSIG): a pool killed by SIGKILL or the OOM
killer leaves no worker behind.

With a metrics port the supervisor serves Prometheus metrics in multiprocess mode: children write their
counters to files in a private directory, the supervisor sums them on each scrape, drops a dead child's live
gauges and removes the directory at exit. It also sets the lag and pending gauges from XINFO GROUPS.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from types import FrameType

import redis

from common import metrics
from common.broker import ACL_HINT, connect, redact
from common.errors import BrokerError, BundleError, ConfigError, WorkerError
from common.exitcodes import ChildExit, ExitCode
from common.groups import group_state, sources
from common.streams import SourceKeys
from workers.worker import WorkerConfig, child_main

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 30.0
GAUGES_EVERY_S = 5.0
BURST_MAX_FAILURES = 5  # with backoff and redis-py's retries: ~40 s of a broker outage before a burst pool gives up
OUTAGE_MAX_BACKOFF_S = 4.0


@dataclass
class Slot:
    index: int
    proc: SpawnProcess | None = None
    started: float = 0.0
    failures: int = 0
    outages: int = 0  # exits in a row for an unreachable broker
    respawn_at: float = 0.0
    done: bool = False


@dataclass
class Pool:
    config: WorkerConfig
    size: int
    slots: list[Slot] = field(default_factory=list)
    metrics_port: int | None = None
    stopping: bool = False
    killed: bool = False
    gave_up: str | None = None  # burst: why the pool stopped respawning
    fatal: BrokerError | BundleError | None = None  # a child was refused a command or has no bundle: the pool stopped
    _gauges: BrokerGauges | None = field(default=None, init=False)

    def run(self) -> int:
        ctx = mp.get_context("spawn")
        metrics_dir = self._serve_metrics() if self.metrics_port is not None else None
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.slots = [Slot(i) for i in range(self.size)]
        try:
            while not all(slot.done for slot in self.slots):
                for slot in self.slots:
                    self._tend(ctx, slot)
                if self._gauges is not None:
                    self._gauges.tick()
                time.sleep(0.1)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if metrics_dir is not None:
                metrics.cleanup_multiprocess(metrics_dir)
        if self.fatal is not None:
            raise self.fatal
        if self.gave_up is not None and not self.killed:
            raise WorkerError(self.gave_up)
        return ExitCode.INTERRUPTED if self.killed else ExitCode.OK

    def _serve_metrics(self) -> str:
        """Before the first spawn: children inherit PROMETHEUS_MULTIPROC_DIR from this process."""
        assert self.metrics_port is not None
        path = metrics.prepare_multiprocess()
        try:
            port = metrics.serve(self.metrics_port, multiprocess=True)
        except OSError as exc:
            metrics.cleanup_multiprocess(path)
            raise ConfigError(f"cannot serve metrics on port {self.metrics_port}: {exc}. "
                              "Pick a free --metrics-port (0: any free port).") from exc
        log.info("Prometheus metrics of %d workers on http://0.0.0.0:%d/metrics", self.size, port)
        self._gauges = BrokerGauges(connect(self.config.redis_url), self.config.namespace)
        return path

    def _tend(self, ctx: mp.context.SpawnContext, slot: Slot) -> None:
        if slot.done:
            return
        if slot.proc is not None and slot.proc.is_alive():
            return
        if slot.proc is not None:
            self._reap(slot)
            if slot.done:
                return
        if self.stopping:
            slot.done = True
        elif time.monotonic() >= slot.respawn_at:
            slot.proc = ctx.Process(target=child_main, args=(self.config,), name=f"vigil-worker-{slot.index}")
            slot.proc.start()
            slot.started = time.monotonic()

    def _reap(self, slot: Slot) -> None:
        assert slot.proc is not None
        code = slot.proc.exitcode
        if self.metrics_port is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(slot.proc.pid)
        slot.proc.close()
        slot.proc = None
        if code in (ChildExit.REFUSED, ChildExit.BUNDLE):  # every respawn would fail the same way
            if code == ChildExit.REFUSED:
                self.fatal = BrokerError(f"worker {slot.index}: the broker refuses the workers' login or a command "
                                         "they need (the log above says which). Check the user and password in "
                                         f"REDIS_URL; for a refused command: {ACL_HINT}")
                log.error("worker %d was refused by the broker: stopping the pool", slot.index)
            else:
                self.fatal = BundleError(f"worker {slot.index} cannot load the bundle {self.config.bundle} (the log "
                                         "above says why: was it moved, deleted or replaced since the pool started?)."
                                         " Restore it, or restart the pool with --bundle PATH.")
                log.error("worker %d cannot load the bundle: stopping the pool", slot.index)
            slot.done = True
            if not self.stopping:
                self._drain()
            return
        if self.stopping or (code == 0 and self.config.burst):
            slot.done = True
            return
        lived = time.monotonic() - slot.started
        if lived > HEALTHY_AFTER_S:
            slot.failures = slot.outages = 0
        if code == ChildExit.UNREACHABLE:
            slot.outages += 1
            delay = min(OUTAGE_MAX_BACKOFF_S, 0.5 * 2 ** (slot.outages - 1))
        else:
            slot.failures += 1
            delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (slot.failures - 1))
        if self.config.burst and slot.failures + slot.outages >= BURST_MAX_FAILURES:  # either kind, in a row
            self._give_up(slot, code, slot.failures + slot.outages)
            return
        slot.respawn_at = time.monotonic() + delay
        if code == ChildExit.UNREACHABLE:
            log.error("worker %d lost the broker (%s); respawning in %.1fs", slot.index,
                      redact(self.config.redis_url), delay)
        else:
            log.error("worker %d exited with code %s after %.1fs; respawning in %.1fs", slot.index, code, lived,
                      delay)

    def _give_up(self, slot: Slot, code: int | None, tries: int) -> None:
        why = (f"the broker at {redact(self.config.redis_url)} was unreachable each time: is it up? Is REDIS_URL "
               "right?" if code == ChildExit.UNREACHABLE else f"last exit code {code}; the log above says why")
        self.gave_up = (f"worker {slot.index} failed {tries} times in a row with no run over {HEALTHY_AFTER_S:.0f}s "
                        f"between ({why}); --burst gives up instead of respawning it.")
        log.error("worker %d failed %d times in a row: giving up (--burst), draining the other workers", slot.index,
                  tries)
        slot.done = True
        self._drain()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            self.killed = True
            for slot in self.slots:
                if slot.proc is not None and slot.proc.is_alive():
                    slot.proc.kill()
            return
        log.info("signal %d: draining workers (send again to stop now)", signum)
        self._drain()

    def _drain(self) -> None:
        self.stopping = True
        for slot in self.slots:
            if slot.proc is not None and slot.proc.is_alive():
                slot.proc.terminate()


class BrokerGauges:
    """Every GAUGES_EVERY_S, lag and pending per source from XINFO GROUPS (a few commands per source)."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self._next = 0.0

    def tick(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + GAUGES_EVERY_S
        m = metrics.metrics()
        try:
            for source in sources(self.client, self.namespace):
                state = group_state(self.client, SourceKeys(self.namespace, source).frames)
                if state["lag"] is not None:
                    m.lag.labels(source).set(state["lag"])
                    m.pending.labels(source).set(state["pending"])
        except redis.RedisError as exc:  # the broker is down: keep supervising, try again next tick
            log.warning("could not read lag/pending for metrics: %s", exc)
