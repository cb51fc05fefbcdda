"""Packs through the reader and the publish script: batches are counted in frames, a pack is read once, and an
entry the janitor reclaims while this reader still holds it is not processed twice."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from common.schemas import Frame, Result, decode_entry
from common.streams import SourceKeys
from producers.files.publisher import SourcePublisher
from tests.helpers import TINY_BUNDLE
from workers.reader import BatchReader, Entry, ReadPolicy, _unique, frames_in
from workers.writer import Kind, Outcome, ResultWriter

pytestmark = pytest.mark.integration


def publish_packs(client: redis.Redis, namespace: str, source: str, frames: int, pack: int) -> None:
    pub = SourcePublisher(client, namespace, source, high_water=10**9, pack=pack)
    pub.open(f"/videos/{source}.mp4", restart=False)
    pixels = np.zeros((4, 4, 1), np.uint8)
    pub.send([Frame.from_pixels(source, seq, pixels, seq / 25, time.time()) for seq in range(frames)])


def classify(writer: ResultWriter, entries: list[Entry]) -> None:
    outcomes = [Outcome(e.source, e.entry_id, Kind.RESULT, Result(f.source, f.frame_id, f.seq, "x", 1.0).encode())
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
    assert frames_in(reader.release()) <= 4 * 32  # at most one share per stream, not 4 x 32 packs (2,048 frames)


def test_a_camera_beside_a_flooding_file_still_gets_its_share(client: redis.Redis, namespace: str) -> None:
    publish_packs(client, namespace, "cam", 200, pack=1)
    client.hset(SourceKeys(namespace, "cam").meta, "mode", "live")
    publish_packs(client, namespace, "file", 16 * 40, pack=16)
    reader = BatchReader(client, namespace, "w1", ReadPolicy(max_batch=32, per_source_cap=32, max_wait_ms=20))
    for _ in range(5):
        batch = reader.next_batch()
        cam = sum(e.frames for e in batch if e.source == "cam")
        assert cam >= 8 and frames_in(batch) >= 24, [(e.source, e.frames) for e in batch]  # not 1 camera frame


def test_unique_keeps_one_copy_with_the_highest_delivery_count() -> None:
    carried, reclaimed = Entry("a", "1-15", None, 1, 16), Entry("a", "1-15", None, 2, 16)
    other = Entry("a", "1-31", None, 1, 16)
    assert _unique([carried, other, reclaimed]) == [reclaimed, other]


def test_publisher_reads_the_lag_only_when_it_could_reach_high_water(client: redis.Redis, namespace: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The lag grows by at most one entry per XADD, so XINFO GROUPS is needed only when the entries sent since
    the last reading could have crossed the mark; and once they could, the publisher still pauses."""
    pub = SourcePublisher(client, namespace, "lagged", high_water=64, pack=8)
    pub.open("/videos/lagged.mp4", restart=False)
    readings: list[int] = []
    real_lag = pub.lag
    monkeypatch.setattr(pub, "lag", lambda: readings.append(1) or real_lag())
    pixels = np.zeros((4, 4, 1), np.uint8)

    def chunk(start: int) -> list[Frame]:
        return [Frame.from_pixels("lagged", seq, pixels, seq / 25, time.time()) for seq in range(start, start + 16)]

    for start in range(0, 64, 16):  # 4 chunks of 2 packs: 64 frames, the high-water mark, with no consumer
        pub.send(chunk(start))
    assert len(readings) == 1  # room for 8 entries (64 frames) after the first reading
    paused = []
    monkeypatch.setattr("producers.files.publisher.time.sleep", lambda s: paused.append(s) or (_ for _ in ()).throw(
        TimeoutError("paused")))
    pub.send(chunk(64))  # no room left: it reads the lag (64 frames, at the mark, not above) and sends
    assert len(readings) == 2 and not paused
    with pytest.raises(TimeoutError):
        pub.send(chunk(80))  # 80 frames undelivered: above the mark, so it waits
    assert len(readings) == 3 and paused


def test_a_raw_pack_with_one_bad_frame_dead_letters_only_that_frame(redis_url: str, client: redis.Redis,
                                                                     namespace: str) -> None:
    """The worker's one-array-per-pack path must give way to the per-frame one when a frame does not fit: that
    frame is dead-lettered with its id, the others are classified, the entry is acked once."""
    from vigil_results.reader import read_dead, read_results
    from workers.worker import Worker, WorkerConfig

    pub = SourcePublisher(client, namespace, "cam", high_water=10**9, pack=4)
    pub.open("/videos/cam.mp4", restart=False)
    good = np.zeros((28, 28, 1), np.uint8).tobytes()
    frames = [Frame("cam", seq, seq / 25, time.time(), (28, 28, 1), "uint8", "raw", good[:-1] if seq == 2 else good)
              for seq in range(4)]
    pub.send(frames)
    worker = Worker(WorkerConfig(redis_url, namespace, TINY_BUNDLE, ReadPolicy(max_batch=8, max_wait_ms=5)))
    try:
        entries = worker.reader.next_batch()
        assert [e.frames for e in entries] == [4]
        worker.process(entries)
    finally:
        worker.client.close()
    assert [r.seq for r in read_results(client, namespace, "cam")] == [0, 1, 3]
    dead = read_dead(client, namespace, "cam")
    assert [(d["frame_id"], "do not fit" in d["reason"]) for d in dead] == [("cam:2", True)]
    assert client.xpending(SourceKeys(namespace, "cam").frames, "workers")["pending"] == 0


def test_an_unexpected_decode_error_leaves_the_entry_pending_once_then_dead_letters_it(
        redis_url: str, client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure no check foresaw (here a MemoryError injected into decoding one entry) may pass: the entry gets
    one more try from the janitor instead of a dead letter on first sight; the rest of the batch flows."""
    import dataclasses

    import workers.worker
    from vigil_results.reader import read_dead, read_results
    from workers.worker import Worker, WorkerConfig

    pub = SourcePublisher(client, namespace, "cam", high_water=10**9, pack=4)
    pub.open("/videos/cam.mp4", restart=False)
    pub.send([Frame.from_pixels("cam", seq, np.zeros((28, 28, 1), np.uint8), seq / 25, time.time())
              for seq in range(8)])  # two entries, ids <epoch>-3 and <epoch>-7
    real = workers.worker.decode_entry

    def failing(fields: dict[bytes, bytes] | None) -> list[Frame]:
        frames = real(fields)
        if frames[0].seq == 4:
            raise MemoryError
        return frames

    monkeypatch.setattr(workers.worker, "decode_entry", failing)
    worker = Worker(WorkerConfig(redis_url, namespace, TINY_BUNDLE, ReadPolicy(max_batch=8, max_wait_ms=5)))
    try:
        entries = worker.reader.next_batch()
        worker.process(entries)
        assert [r.seq for r in read_results(client, namespace, "cam")] == [0, 1, 2, 3]
        assert read_dead(client, namespace, "cam") == []
        assert client.xpending(SourceKeys(namespace, "cam").frames, "workers")["pending"] == 1
        assert worker.processed == 4  # the entry left pending is not counted as done
        # delivered again, as the janitor would
        again = [dataclasses.replace(e, deliveries=2) for e in entries if e.entry_id == pub.entry_id(7)]
        worker.process(again)
        assert worker.processed == 8
    finally:
        worker.client.close()
    dead = read_dead(client, namespace, "cam")
    assert [(d["entry_id"], d["frames"], "MemoryError" in d["reason"]) for d in dead] == [(pub.entry_id(7), "4", True)]
    assert client.xpending(SourceKeys(namespace, "cam").frames, "workers")["pending"] == 0
