"""SourcePublisher: how frames are cut into packs."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from common.schemas import Frame
from producers.publisher import SourcePublisher

pytestmark = pytest.mark.integration


def test_a_dtype_change_starts_a_new_pack(client: redis.Redis, namespace: str) -> None:
    pub = SourcePublisher(client, namespace, "mixed", high_water=10**9, pack=8)
    pub.open("/images/mixed", restart=False)
    dtypes = [np.uint8, np.uint8, np.uint16, np.uint8]
    frames = [Frame.from_pixels("mixed", seq, np.zeros((4, 4, 3), dtype), float(seq), time.time())
              for seq, dtype in enumerate(dtypes)]
    assert [[f.seq for f in pack] for pack in pub.packs(frames)] == [[0, 1], [2], [3]]
    pub.send(frames)  # encode_entry refuses a pack of mixed dtypes
    assert [entry_id for entry_id, _ in client.xrange(pub.keys.frames)] == [b"1-1", b"1-2", b"1-3"]
