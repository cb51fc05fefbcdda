"""The supervisor's respawn schedule (pure: exit codes in, delays out; the real pool under failure is in
tests/e2e/test_outage.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common.exitcodes import ChildExit
from workers.pool import OUTAGE_MAX_BACKOFF_S, Pool, Slot
from workers.reader import ReadPolicy
from workers.worker import WorkerConfig


class _Exited:
    """What the pool reads of a child that has exited."""

    def __init__(self, code: int) -> None:
        self.exitcode = code
        self.pid = 0

    def close(self) -> None:
        pass


def _delays(pool: Pool, slot: Slot, codes: list[int]) -> list[float]:
    out = []
    for code in codes:
        proc: Any = _Exited(code)
        slot.proc, slot.started = proc, time.monotonic()  # each child lived a moment: not a healthy run
        pool._reap(slot)
        out.append(round(slot.respawn_at - time.monotonic(), 1))
    return out


def _pool(burst: bool = False) -> Pool:
    return Pool(WorkerConfig("redis://127.0.0.1:1/0", "ns", Path("."), ReadPolicy(), burst=burst), 1)


def test_a_long_outage_respawns_within_the_outage_cap_and_leaves_other_failures_alone() -> None:
    """Outage exits back off to OUTAGE_MAX_BACKOFF_S (4 s), not to a crash's 30 s, and do not count towards the
    next crash's backoff."""
    pool, slot = _pool(), Slot(0)
    delays = _delays(pool, slot, [ChildExit.UNREACHABLE] * 8)
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0] and max(delays) == OUTAGE_MAX_BACKOFF_S
    assert _delays(pool, slot, [1, 1]) == [0.5, 1.0]  # a crash after the outage starts its own count


def test_burst_gives_up_after_five_failures_of_either_kind_in_a_row() -> None:
    pool, slot = _pool(burst=True), Slot(0)
    _delays(pool, slot, [1, ChildExit.UNREACHABLE, 1, ChildExit.UNREACHABLE])
    assert pool.gave_up is None
    _delays(pool, slot, [1])
    assert pool.gave_up is not None and "failed 5 times in a row" in pool.gave_up and slot.done
