"""Packs through the reader and the publish script: batches are counted in frames, a pack is read once, and an
entry the janitor reclaims while this reader still holds it is not processed twice."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from common.schemas import Frame, Result, decode_entry
from common.streams import SourceKeys
from producers.publisher import SourcePublisher
from workers.publish import Outcome, ResultWriter
from workers.reader import BatchReader, Entry, ReadPolicy, _unique, frames_in

pytestmark = pytest.mark.integration


def publish_packs(client: redis.Redis, namespace: str, source: str, frames: int, pack: int) -> None:
    pub = SourcePublisher(client, namespace, source, high_water=10**9, pack=pack)
    pub.open(f"/videos/{source}.mp4", restart=False)
    pixels = np.zeros((4, 4, 1), np.uint8)
    pub.send([Frame.from_pixels(source, seq, pixels, seq / 25, time.time()) for seq in range(frames)])


def classify(writer: ResultWriter, entries: list[Entry]) -> None:
    outcomes = [Outcome(e.source, e.entry_id, "r", Result(f.source, f.frame_id, f.seq, "x", 1.0).encode())
                for e in entries for f in decode_entry(e.fields)]
    writer.publish(outcomes)


def test_a_reclaimed_entry_still_held_is_processed_once(client: redis.Redis, namespace: str) -> None:
    publish_packs(client, namespace, "a", 24, pack=8)  # 3 packs
    reader = BatchReader(client, namespace, "w1", ReadPolicy(max_batch=16, per_source_cap=16, claim_idle_ms=100,
                                                            max_wait_ms=5))
    writer = ResultWriter(client, namespace)
    classify(writer, reader.next_batch())
    time.sleep(0.3)  # anything this reader read but did not finish is now idle past claim_idle_ms
    while batch := reader.next_batch():
        assert len({e.entry_id for e in batch}) == len(batch), "one entry twice in a batch"
        classify(writer, batch)
    keys = SourceKeys(namespace, "a")
    assert sorted(int(f[b"seq"]) for _, f in client.xrange(keys.results)) == list(range(24))
    assert client.hget(keys.meta, "processed") == b"24"


def test_first_reads_do_not_fetch_far_more_than_a_batch(client: redis.Redis, namespace: str) -> None:
    for source in ("a", "b", "c", "d"):
        publish_packs(client, namespace, source, 160, pack=16)
    reader = BatchReader(client, namespace, "w1", ReadPolicy(max_batch=32, per_source_cap=32, max_wait_ms=5))
    batch = reader.next_batch()
    assert frames_in(batch) == 32
    assert frames_in(reader.release()) <= 4 * 32  # at most one share per stream; was 4 x 32 packs (2,048 frames)


def test_a_camera_beside_a_flooding_file_still_gets_its_share(client: redis.Redis, namespace: str) -> None:
    publish_packs(client, namespace, "cam", 200, pack=1)
    client.hset(SourceKeys(namespace, "cam").meta, "mode", "live")
    publish_packs(client, namespace, "file", 16 * 40, pack=16)
    reader = BatchReader(client, namespace, "w1", ReadPolicy(max_batch=32, per_source_cap=32, max_wait_ms=20))
    for _ in range(5):
        batch = reader.next_batch()
        cam = sum(e.frames for e in batch if e.source == "cam")
        assert cam >= 8 and frames_in(batch) >= 24, [(e.source, e.frames) for e in batch]  # was 1 camera frame


def test_unique_keeps_one_copy_with_the_highest_delivery_count() -> None:
    carried, reclaimed = Entry("a", "1-15", None, 1, 16), Entry("a", "1-15", None, 2, 16)
    other = Entry("a", "1-31", None, 1, 16)
    assert _unique([carried, other, reclaimed]) == [reclaimed, other]
