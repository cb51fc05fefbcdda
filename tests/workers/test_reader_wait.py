"""The micro-batch wait must not lean on XREADGROUP BLOCK: servers resolve BLOCK timeouts on their cron tick
(hz 10: 100 ms), so a 5 ms max wait done with "BLOCK 5" held every live frame ~100 ms."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from common.broker import ensure_group
from common.streams import GROUP, SourceKeys, registry_key
from workers.reader import IDLE_BLOCK_MS, BatchReader, ReadPolicy

pytestmark = pytest.mark.integration


class RecordingClient(redis.Redis):
    """A real client that remembers the BLOCK argument of every XREADGROUP."""

    blocks: list[int | None]

    def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
        self.blocks.append(kwargs.get("block"))
        return super().xreadgroup(*args, **kwargs)


def test_filling_a_batch_polls_instead_of_short_blocks(redis_url: str, namespace: str) -> None:
    client = RecordingClient.from_url(redis_url)
    client.blocks = []
    keys = SourceKeys(namespace, "cam")
    ensure_group(client, keys.frames, GROUP)
    client.sadd(registry_key(namespace), "cam")
    client.xadd(keys.frames, {"f": b"x"})
    reader = BatchReader(client, namespace, "t", ReadPolicy(max_batch=8, max_wait_ms=20, block_ms=1000))

    batch = reader.next_batch()

    assert [e.source for e in batch] == ["cam"]
    assert client.blocks[0] == IDLE_BLOCK_MS  # idle: one blocking read, woken by the entry
    assert len(client.blocks) > 1 and all(b is None for b in client.blocks[1:])  # then polls until max wait
    client.close()
