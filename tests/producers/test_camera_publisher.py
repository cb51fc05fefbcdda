"""The live cap (one Lua script): a short stream of undelivered frames, exact drop counts, pending entries safe."""

import time

import numpy as np
import pytest
import redis

from common.errors import ConfigError
from common.schemas import Frame
from common.streams import GROUP, SourceKeys, events_key
from producers.cameras.publisher import LivePublisher

pytestmark = pytest.mark.integration


def frame(seq: int) -> Frame:
    return Frame.from_pixels("cam", seq, np.full((4, 4, 1), seq % 256, np.uint8), time.time(), time.time())


def produce(pub: LivePublisher, start: int, count: int) -> int:
    trimmed = 0
    for seq in range(start, start + count):
        next_seq, dropped = pub.publish(frame(seq))
        assert next_seq == seq + 1
        trimmed += dropped
    return trimmed


def meta_int(client: redis.Redis, keys: SourceKeys, name: str) -> int:
    return int(client.hget(keys.meta, name) or 0)


def test_cap_without_readers_keeps_exactly_maxlen_newest(client: redis.Redis, namespace: str) -> None:
    pub = LivePublisher(client, namespace, "cam", maxlen=16)
    assert pub.open({"url": "test"}) == 0
    assert produce(pub, 0, 200) == 184
    keys = pub.keys
    entries = client.xrange(keys.frames)
    assert len(entries) == 16
    assert [Frame.decode(fields[b"f"]).seq for _, fields in entries] == list(range(184, 200))
    assert (meta_int(client, keys, "produced"), meta_int(client, keys, "dropped_trimmed")) == (200, 184)
    assert client.hget(keys.meta, "mode") == b"live"


def test_pending_entries_are_never_deleted_and_done_ones_are(client: redis.Redis, namespace: str) -> None:
    pub = LivePublisher(client, namespace, "cam", maxlen=16)
    pub.open({})
    keys = pub.keys
    produce(pub, 0, 10)
    read = client.xreadgroup(GROUP, "w1", {keys.frames: ">"}, count=10)
    delivered = [entry_id for entry_id, _ in read[0][1]]
    client.xack(keys.frames, GROUP, *delivered[:4])  # 0..3 done, 4..9 pending
    trimmed = produce(pub, 10, 200)
    assert trimmed == 200 - 16
    pending = client.xpending_range(keys.frames, GROUP, "-", "+", 100)
    assert [p["message_id"] for p in pending] == delivered[4:]
    remaining = [entry_id for entry_id, _ in client.xrange(keys.frames)]
    assert remaining[:6] == delivered[4:]  # pending entries kept, with their payloads
    assert all(fields for _, fields in client.xrange(keys.frames, delivered[4], delivered[-1]))
    assert len(remaining) == 6 + 16  # done entries trimmed, 16 undelivered kept
    client.xack(keys.frames, GROUP, *delivered[4:])
    produce(pub, 210, 1)
    assert client.xlen(keys.frames) == 16  # all delivered ones done: trimmed on the next publish
    counters = pub.counters()
    assert counters["produced"] == 211 and counters["dropped_trimmed"] == 200 - 16 + 1


def test_a_frame_sent_again_after_a_lost_reply_is_not_added_twice(client: redis.Redis, namespace: str) -> None:
    """redis-py re-sends the script when the connection drops after the server ran it: the re-sent frame adds
    nothing (added twice, under two ids, it would get two results)."""
    pub = LivePublisher(client, namespace, "cam", maxlen=4)
    pub.open({})
    assert pub.publish(frame(0)) == (1, 0)
    assert pub.publish(frame(0)) == (1, 0)
    assert [Frame.decode(f[b"f"]).seq for _, f in client.xrange(pub.keys.frames)] == [0]
    assert pub.next_seq() == 1 and meta_int(client, pub.keys, "produced") == 1
    assert pub.publish(frame(1)) == (2, 0)



def test_two_cameras_on_one_source_each_add_every_frame(client: redis.Redis, namespace: str) -> None:
    """An old and a new pod of one camera overlapping: both number frames from the same count, and every frame of
    each is added (a re-send check keyed on the seq would drop about half of each one's frames, uncounted)."""
    old, new = (LivePublisher(client, namespace, "cam", maxlen=100) for _ in range(2))
    old.open({})
    new.open({})
    for seq in range(10):
        old.publish(frame(seq))
        new.publish(frame(seq))
    assert client.xlen(old.keys.frames) == 20 and meta_int(client, old.keys, "produced") == 20
    # and no two share a seq (a frame_id): each frame the other producer's numbering collided with was numbered
    # again with the next free seq (not 0, 0, 1, 1, ...: two results per frame_id)
    seqs = [Frame.decode(f[b"f"]).seq for _, f in client.xrange(old.keys.frames)]
    assert seqs == list(range(20))


def test_producer_restart_continues_seq(client: redis.Redis, namespace: str) -> None:
    pub = LivePublisher(client, namespace, "cam", maxlen=4)
    pub.open({})
    produce(pub, 0, 7)
    again = LivePublisher(client, namespace, "cam", maxlen=4)
    assert again.open({}) == 7
    produce(again, 7, 3)
    seqs = [Frame.decode(f[b"f"]).seq for _, f in client.xrange(again.keys.frames)]
    assert seqs == [6, 7, 8, 9]


def test_state_changes_are_events(client: redis.Redis, namespace: str) -> None:
    pub = LivePublisher(client, namespace, "cam", maxlen=4)
    pub.open({})
    pub.set_state("connecting", "opening")
    pub.set_state("online", "receiving")
    events = [fields for _, fields in client.xrange(events_key(namespace))]
    assert [(e[b"state"], e[b"previous"]) for e in events] == [(b"connecting", b""), (b"online", b"connecting")]
    assert client.hget(pub.keys.meta, "state") == b"online"
    assert client.hget(pub.keys.meta, "state_reason") == b"receiving"


def test_file_source_name_is_refused(client: redis.Redis, namespace: str) -> None:
    keys = SourceKeys(namespace, "cam")
    client.hset(keys.meta, "path", "/videos/a.mp4")
    with pytest.raises(ConfigError, match="file source"):
        LivePublisher(client, namespace, "cam", maxlen=4).open({})


def test_a_camera_and_a_file_producer_of_one_source_never_both_open(client: redis.Redis, namespace: str) -> None:
    """A camera's open and a file producer's open are one script each, so that no open falls between another
    one's check and its record and one source is never both: whichever comes second is refused, and it changes
    nothing."""
    from producers.files.publisher import SourcePublisher

    camera = LivePublisher(client, namespace, "cam", maxlen=4)
    assert camera.open({"url": "rtsp://cam"}) == 0 and camera.state == ""
    with pytest.raises(ConfigError, match="live camera's stream"):
        SourcePublisher(client, namespace, "cam", 10**9).open("/f.mp4", restart=False)
    assert client.hget(camera.keys.meta, "path") is None
    camera.set_state("online", "receiving")
    again = LivePublisher(client, namespace, "cam", maxlen=4)
    assert again.open({}) == 0 and again.state == "online"  # reopened: the state carries over
    SourcePublisher(client, namespace, "file", 10**9).open("/f.mp4", restart=False)
    with pytest.raises(ConfigError, match="is a file source"):
        LivePublisher(client, namespace, "file", maxlen=4).open({})
    assert client.hget(SourceKeys(namespace, "file").meta, "mode") is None
