"""A reader leaves its consumer group when done, but never while it owns pending entries: XGROUP DELCONSUMER
drops a consumer's pending entries, and nothing could reclaim them afterwards."""

from __future__ import annotations

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
