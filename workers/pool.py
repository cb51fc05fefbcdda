"""Supervisor of N spawned worker processes: respawns crashed children with backoff, forwards shutdown.

First SIGTERM/SIGINT: children drain (finish the batch, ack) and the pool exits 0. Second: kill them, exit now.
In burst mode a child that exits 0 has drained the streams and is not replaced.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from types import FrameType

from workers.worker import WorkerConfig, child_main

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 30.0


@dataclass
class Slot:
    index: int
    proc: SpawnProcess | None = None
    started: float = 0.0
    failures: int = 0
    respawn_at: float = 0.0
    done: bool = False


@dataclass
class Pool:
    config: WorkerConfig
    size: int
    slots: list[Slot] = field(default_factory=list)
    stopping: bool = False
    killed: bool = False

    def run(self) -> int:
        ctx = mp.get_context("spawn")
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.slots = [Slot(i) for i in range(self.size)]
        try:
            while not all(slot.done for slot in self.slots):
                for slot in self.slots:
                    self._tend(ctx, slot)
                time.sleep(0.1)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 130 if self.killed else 0

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
        slot.proc.close()
        slot.proc = None
        if self.stopping or (code == 0 and self.config.burst):
            slot.done = True
            return
        lived = time.monotonic() - slot.started
        slot.failures = 1 if lived > HEALTHY_AFTER_S else slot.failures + 1
        delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (slot.failures - 1))
        slot.respawn_at = time.monotonic() + delay
        log.error("worker %d exited with code %s after %.1fs; respawning in %.1fs", slot.index, code, lived, delay)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            self.killed = True
            for slot in self.slots:
                if slot.proc is not None and slot.proc.is_alive():
                    slot.proc.kill()
            return
        log.info("signal %d: draining workers (send again to stop now)", signum)
        self.stopping = True
        for slot in self.slots:
            if slot.proc is not None and slot.proc.is_alive():
                slot.proc.terminate()
