"""A reader leaves its consumer group when done, but never while it owns pending entries: XGROUP DELCONSUMER
drops a consumer's pending entries, and nothing could reclaim them afterwards."""

from __future__ import annotations

import time

import pytest
import redis

from common.streams import GROUP, SourceKeys, registry_key
from workers.reader import BatchReader, ReadPolicy

pytestmark = pytest.mark.integration


def test_a_consumer_leaves_the_group_only_once_it_owns_no_pending_entry(client: redis.Redis, namespace: str) -> None:
    frames = SourceKeys(namespace, "cam").frames
    client.sadd(registry_key(namespace), "cam", "gone")
    for _ in range(3):
        client.xadd(frames, {"f": b"x"})
    reader = BatchReader(client, namespace, "w1", ReadPolicy(max_batch=8, max_wait_ms=0))
    batch = reader.next_batch()
    client.delete(SourceKeys(namespace, "gone").frames)  # a source deleted meanwhile: nothing to leave there

    reader.leave()
    assert [c["name"] for c in client.xinfo_consumers(frames, GROUP)] == [b"w1"]  # still owns its 3 entries

    client.xack(frames, GROUP, *[e.entry_id for e in batch])
    reader.leave()
    assert client.xinfo_consumers(frames, GROUP) == []


def test_the_janitor_forgets_consumers_that_are_gone_but_never_one_with_pending_entries(client: redis.Redis,
                                                                                        namespace: str) -> None:
    """A SIGKILLed worker cannot leave its group, and `vigil status` would list it for ever: the janitor deletes
    idle consumers that own no pending entry, never itself nor one that owns an entry."""
    frames = SourceKeys(namespace, "cam").frames
    client.sadd(registry_key(namespace), "cam")
    client.xadd(frames, {"f": b"x"})
    reader = BatchReader(client, namespace, "alive", ReadPolicy(max_batch=8, max_wait_ms=0, forget_idle_ms=200))
    reader._refresh_sources(force=True)  # creates the group
    for name in ("alive", "killed"):
        client.xgroup_createconsumer(frames, GROUP, name)  # both idle, neither owns an entry
    client.xreadgroup(GROUP, "holder", {frames: ">"}, count=1)  # idle too, but it owns the entry
    time.sleep(0.3)
    reader.janitor.forget_gone_consumers(reader.sources)
    assert sorted(c["name"] for c in client.xinfo_consumers(frames, GROUP)) == [b"alive", b"holder"]
    assert client.xpending(frames, GROUP)["pending"] == 1
