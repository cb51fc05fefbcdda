"""SourcePublisher: how frames are cut into packs, the end-of-stream marker, what a resume must share."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import redis

from common.errors import BrokerError, ConfigError
from common.schemas import Frame, decode_entry, encode_entry
from common.streams import GROUP
from producers.files.publisher import SourcePublisher
from workers.writer import Kind, Outcome, ResultWriter, Tally

pytestmark = pytest.mark.integration


def test_a_dtype_change_starts_a_new_pack(client: redis.Redis, namespace: str) -> None:
    pub = SourcePublisher(client, namespace, "mixed", high_water=10**9, pack=8)
    pub.open("/images/mixed", restart=False)
    dtypes = [np.uint8, np.uint8, np.uint16, np.uint8]
    frames = [Frame.from_pixels("mixed", seq, np.zeros((4, 4, 3), dtype), float(seq), time.time())
              for seq, dtype in enumerate(dtypes)]
    assert [[f.seq for f in pack] for pack in pub.packs(frames)] == [[0, 1], [2], [3]]
    pub.send(frames)  # encode_entry refuses a pack of mixed dtypes
    assert [entry_id for entry_id, _ in client.xrange(pub.keys.frames)] == [pub.entry_id(s).encode() for s in (1, 2, 3)]


def test_end_refuses_a_stream_that_does_not_end_with_its_marker(client: redis.Redis, namespace: str) -> None:
    """A stream holding entries past this run's frames (produced differently before): the server refuses the
    end-of-stream XADD, and end() raises and leaves 'eos' unset (a source without a marker is not ended)."""
    pub = SourcePublisher(client, namespace, "cam", high_water=10**9, pack=4)
    pub.open("/videos/cam.mp4", restart=False)
    pub.send([Frame.from_pixels("cam", seq, np.zeros((4, 4, 1), np.uint8), seq / 25, time.time())
              for seq in range(4)])
    client.xadd(pub.keys.frames, {b"f": b"from an earlier run"}, id=pub.entry_id(20))
    with pytest.raises(BrokerError, match="end-of-stream"):
        pub.end(4)
    assert client.hget(pub.keys.meta, "eos") is None


def test_a_resume_that_would_not_line_up_is_refused(client: redis.Redis, namespace: str) -> None:
    identity = {"sampling": "every=2", "content": "file:100:1", "input": "28x28x1 uint8 gray stretch"}
    SourcePublisher(client, namespace, "cam", 10**9).open("/v.mp4", restart=False, identity=identity)
    same = SourcePublisher(client, namespace, "cam", 10**9)
    assert same.open("/v.mp4", restart=False, identity=identity) == 0
    with pytest.raises(ConfigError, match=r"sampling was 'every=2', now 'every=3'.*--restart"):
        same.open("/v.mp4", restart=False, identity={**identity, "sampling": "every=3"})
    assert same.open("/v.mp4", restart=True, identity={**identity, "sampling": "every=3"}) == 0


def test_reading_the_lag_trims_only_entries_delivered_and_acked(client: redis.Redis, namespace: str) -> None:
    """Reading the lag trims the entries every group has delivered and acked, up to the oldest pending one, so a
    file source's stream does not keep every frame until --restart (gigabytes for a long video at 224x224)."""
    pub = SourcePublisher(client, namespace, "cam", high_water=10**9, pack=1)
    pub.open("/videos/cam.mp4", restart=False)
    pub.send([Frame.from_pixels("cam", seq, np.zeros((4, 4, 1), np.uint8), seq / 25, time.time())
              for seq in range(10)])
    client.xreadgroup(GROUP, "w", {pub.keys.frames: ">"}, count=6)  # 0 .. 5 delivered, pending
    client.xack(pub.keys.frames, GROUP, *map(pub.entry_id, (0, 1, 2)))

    def ids() -> list[int]:
        return [int(eid.split(b"-")[1]) for eid, _ in client.xrange(pub.keys.frames)]

    assert pub.lag() == 4  # 6 .. 9 not delivered yet
    assert ids() == list(range(3, 10))  # acked ones gone; pending 3 .. 5 and undelivered ones kept
    client.xack(pub.keys.frames, GROUP, pub.entry_id(4))  # acked, but after the oldest pending one (3): kept
    assert pub.lag() == 4 and ids() == list(range(3, 10))
    client.xack(pub.keys.frames, GROUP, pub.entry_id(3), pub.entry_id(5))
    assert pub.lag() == 4 and ids() == list(range(6, 10))
    resumed = SourcePublisher(client, namespace, "cam", high_water=10**9, pack=1)
    assert resumed.open("/videos/cam.mp4", restart=False) == 10  # a resume continues after the last frame sent


def test_end_accepts_a_marker_an_interrupted_run_sent_and_workers_processed(client: redis.Redis,
                                                                            namespace: str) -> None:
    """Killed between the marker's XADD and recording eos: workers process the marker and the next run's lag
    reading trims it, so the re-sent XADD is refused and the marker is no longer on the stream."""
    first = SourcePublisher(client, namespace, "cam", high_water=10**9, pack=4)
    first.open("/videos/cam.mp4", restart=False)
    first.send([Frame.from_pixels("cam", seq, np.zeros((4, 4, 1), np.uint8), seq / 25, time.time())
                for seq in range(4)])
    first.send([Frame.end_of_stream("cam", 4, time.time())])  # ... and killed before end() recorded it
    [(_, entries)] = client.xreadgroup(GROUP, "w", {first.keys.frames: ">"})
    client.xack(first.keys.frames, GROUP, *[eid for eid, _ in entries])
    again = SourcePublisher(client, namespace, "cam", high_water=10**9, pack=4)
    assert again.open("/videos/cam.mp4", restart=False) == 5
    again.lag()  # trims everything: all of it was processed
    again.end(4)
    assert client.hget(again.keys.meta, "eos") == b"1"


def test_trimming_keeps_what_another_group_has_not_read_or_a_rewound_group_must_read_again(
        client: redis.Redis, namespace: str) -> None:
    pub = SourcePublisher(client, namespace, "cam", high_water=10**9, pack=1)
    pub.open("/videos/cam.mp4", restart=False)
    pub.send([Frame.from_pixels("cam", seq, np.zeros((4, 4, 1), np.uint8), seq / 25, time.time())
              for seq in range(6)])
    client.xgroup_create(pub.keys.frames, "archive", id=pub.entry_id(2))  # an archiver that has read up to 2
    [(_, entries)] = client.xreadgroup(GROUP, "w", {pub.keys.frames: ">"})
    client.xack(pub.keys.frames, GROUP, *[eid for eid, _ in entries])  # the workers are done with all six
    assert pub.lag() == 0
    assert [eid for eid, _ in client.xrange(pub.keys.frames)] == [pub.entry_id(s).encode() for s in (3, 4, 5)]
    client.xgroup_setid(pub.keys.frames, GROUP, id=pub.entry_id(3))  # an operator rewinds the workers' group
    client.xgroup_setid(pub.keys.frames, "archive", id=pub.entry_id(5))
    assert pub.lag() == 2  # 4 and 5 are to be delivered again
    assert [eid for eid, _ in client.xrange(pub.keys.frames)] == [pub.entry_id(s).encode() for s in (4, 5)]


def test_a_batch_held_across_a_restart_neither_acks_nor_answers_for_the_new_run(client: redis.Redis,
                                                                              namespace: str) -> None:
    """``--restart`` while a worker still holds a batch of the run before: the new run has a higher epoch, so the
    late XACK removes nothing of the new run (not its entry with the same seq) and writes no result for it."""
    def frames(value: int) -> list[Frame]:
        return [Frame.from_pixels("cam", seq, np.full((4, 4, 1), value, np.uint8), seq / 25, time.time())
                for seq in range(4)]

    def outcomes(entry_id: bytes, label: str) -> list[Outcome]:
        return [Outcome("cam", entry_id.decode(), Kind.RESULT, {"seq": str(seq), "label": label}) for seq in range(4)]

    old = SourcePublisher(client, namespace, "cam", high_water=10**9, pack=4)
    old.open("/videos/old.mp4", restart=False)
    old.send(frames(1))
    [(_, [(old_id, _)])] = client.xreadgroup(GROUP, "slow", {old.keys.frames: ">"})
    new = SourcePublisher(client, namespace, "cam", high_water=10**9, pack=4)
    new.open("/videos/new.mp4", restart=True)
    new.send(frames(2))
    [(_, [(new_id, _)])] = client.xreadgroup(GROUP, "fresh", {new.keys.frames: ">"})
    assert new.epoch > old.epoch  # also when the restart comes within the same millisecond
    writer = ResultWriter(client, namespace)
    assert writer.publish(outcomes(old_id, "old")) == {"cam": Tally()}  # the old batch finishes late
    assert writer.publish(outcomes(new_id, "new")) == {"cam": Tally(results=4)}
    assert [fields[b"label"] for _, fields in client.xrange(new.keys.results)] == [b"new"] * 4


def test_a_second_producer_of_a_source_is_warned_and_shares_its_epoch(client: redis.Redis, namespace: str,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Two producers opening a new source together agree on one epoch, the first one's (with an epoch each, the
    server's clock at each open, both copies of the first frames would go on the stream); the second is warned."""
    first, second = (SourcePublisher(client, namespace, "cam", 10**9, pack=4) for _ in range(2))
    first.owner = "camhost-7:4242"  # a producer elsewhere
    first.open("/v.mp4", restart=False)
    with caplog.at_level("WARNING", logger="producers.files.publisher"):
        second.open("/v.mp4", restart=False)  # before the first sent anything
    assert "producer camhost-7:4242 wrote to it 0 s ago. If it is still running, stop one" in caplog.text
    assert first.epoch == second.epoch
    for pub in (first, second):
        pub.send([Frame.from_pixels("cam", seq, np.zeros((4, 4, 1), np.uint8), seq / 25, time.time())
                  for seq in range(8)])
    assert [f.seq for _, fields in client.xrange(first.keys.frames) for f in decode_entry(fields)] == list(range(8))
    first.release()  # a finished producer leaves no mark: the next run is not warned
    assert client.hget(first.keys.meta, "producer") == second.owner.encode()
    second.release()
    assert client.hget(first.keys.meta, "producer") is None


def test_two_producers_whose_packs_do_not_line_up_send_each_frame_once(client: redis.Redis, namespace: str) -> None:
    """One producer resumed after a partial chunk, so its packs start mid-way through the other one's: of a pack
    overlapping the stream's last one, only the frames after the stream's last one go out (the pack's id, its last
    frame's seq, is the higher one, but accepted whole it would send the overlapping frames twice)."""
    first, second = (SourcePublisher(client, namespace, "cam", 10**9, pack=8) for _ in range(2))
    first.open("/v.mp4", restart=False)
    second.open("/v.mp4", restart=False)

    def frames(seqs: range) -> list[Frame]:
        return [Frame.from_pixels("cam", seq, np.zeros((4, 4, 1), np.uint8), seq / 25, time.time()) for seq in seqs]

    first.send(frames(range(0, 16)))  # packs 0-7, 8-15
    second.send(frames(range(5, 21)))  # packs 5-12 (all on the stream), 13-20 (13-15 on it), with the same ids
    first.send(frames(range(16, 24)))  # 16-20 on the stream now
    seqs = [f.seq for _, fields in client.xrange(first.keys.frames) for f in decode_entry(fields)]
    assert seqs == list(range(24))
    assert (first.stats.sent, second.stats.sent) == (16 + 3, 5)
    assert (first.stats.skipped, second.stats.skipped) == (5, 11)


def test_a_stream_a_file_producer_did_not_write_is_not_resumed(client: redis.Redis, namespace: str) -> None:
    """A stream with server-assigned ids (a camera's, its meta hash lost) has no resume point: the open is
    refused, naming --restart (the last id's sequence part is not a frame count to skip)."""
    keys = SourcePublisher(client, namespace, "cam", 10**9).keys
    for _ in range(3):
        client.xadd(keys.frames, {b"f": b"a camera's frame"})
    with pytest.raises(ConfigError, match=r"holds entries a file producer did not write .*no run recorded.*--restart"):
        SourcePublisher(client, namespace, "cam", 10**9).open("/v.mp4", restart=False)
    assert SourcePublisher(client, namespace, "cam", 10**9).open("/v.mp4", restart=True) == 0


def _frames(source: str, seqs: range) -> list[Frame]:
    return [Frame.from_pixels(source, seq, np.zeros((4, 4, 1), np.uint8), seq / 25, time.time()) for seq in seqs]


def test_a_producer_running_through_another_ones_restart_adds_nothing_to_the_new_run(client: redis.Redis,
                                                                                    namespace: str) -> None:
    """The append script checks the run's epoch in the meta hash, not only the stream's last id: after a --restart
    deleted the stream, a producer still running is refused its next chunk and adds nothing to the new run (no
    entry under its old epoch, no checkpoint in the new meta hash), so the new run sends each frame once."""
    old, new = (SourcePublisher(client, namespace, "cam", 10**9, pack=4) for _ in range(2))
    old.open("/v.mp4", restart=False)
    old.send(_frames("cam", range(8)))
    new.open("/v.mp4", restart=True)
    with pytest.raises(BrokerError, match=r"was started over .* nothing more was sent"):
        old.send(_frames("cam", range(8, 16)))
    new.send(_frames("cam", range(12)))
    entries = client.xrange(new.keys.frames)
    assert [f.seq for _, fields in entries for f in decode_entry(fields)] == list(range(12))
    assert {entry_id.split(b"-")[0] for entry_id, _ in entries} == {str(new.epoch).encode()}
    assert client.hget(new.keys.meta, "produced") == b"12"


def test_a_stream_with_entries_and_no_recorded_run_is_refused(client: redis.Redis, namespace: str) -> None:
    """A stream whose entries have no run recorded in the meta hash (its epoch lost, though it names the file)
    has no resume point: the open is refused, naming --restart, and nothing is sent."""
    keys = SourcePublisher(client, namespace, "v", 10**9).keys
    for seq in range(4):
        client.xadd(keys.frames, encode_entry(_frames("v", range(seq, seq + 1))), id=f"1796000000000-{seq}")
    client.hset(keys.meta, mapping={"path": "/v.mp4", "produced": 2})
    pub = SourcePublisher(client, namespace, "v", 10**9, pack=4)
    with pytest.raises(ConfigError, match=r"no run recorded.*--restart"):
        pub.open("/v.mp4", restart=False)
    assert client.xlen(keys.frames) == 4


def test_a_chunk_re_sent_after_a_lost_reply_is_counted_once(client: redis.Redis, namespace: str) -> None:
    """redis-py re-sends a command whose reply was lost. The re-sent append finds its token and answers what it
    did the first time: the chunk counts as sent once, not as frames another producer had sent, and nothing goes
    out twice."""
    pub = SourcePublisher(client, namespace, "cam", 10**9, pack=4)
    pub.open("/v.mp4", restart=False)
    append = pub._append

    def reply_lost_then_retried(**kwargs: Any) -> Any:
        append(**kwargs)  # the server ran it; its reply never arrived
        return append(**kwargs)

    pub._append = reply_lost_then_retried
    pub.send(_frames("cam", range(32)))
    pub._append = append
    pub.send(_frames("cam", range(32, 40)))
    assert (pub.stats.sent, pub.stats.skipped, pub._entries - 1) == (40, 0, 10)
    assert [f.seq for _, fields in client.xrange(pub.keys.frames) for f in decode_entry(fields)] == list(range(40))


def test_a_producer_running_through_a_restart_neither_ends_nor_feeds_the_new_run(client: redis.Redis,
                                                                               namespace: str) -> None:
    """Every step of the old run's producer checks the run: after a --restart, its lag read, its appends and its
    end are refused, so the new run is not marked as ended (a resume of it would send nothing more)."""
    old, new = (SourcePublisher(client, namespace, "cam", 10**9, pack=4) for _ in range(2))
    old.open("/v.mp4", restart=False)
    old.send(_frames("cam", range(8)))
    new.open("/v.mp4", restart=True)
    new.send(_frames("cam", range(4)))
    for step in (old.lag, lambda: old.end(8)):
        with pytest.raises(BrokerError, match="was started over"):
            step()
    assert client.hget(new.keys.meta, "eos") is None
    assert SourcePublisher(client, namespace, "cam", 10**9).open("/v.mp4", restart=False) == 4


def test_a_resume_with_other_settings_is_refused_in_the_same_step_that_records_the_run(client: redis.Redis,
                                                                                       namespace: str) -> None:
    """The file and the settings are checked inside the open script, in the step that records the run (with a
    check and a record in separate steps, two producers of different files opening a new source at once would
    both pass). This checks the refusal; the atomicity is the script's."""
    first = SourcePublisher(client, namespace, "cam", 10**9)
    first.open("/x.mp4", restart=False, identity={"sampling": "every=1"})
    with pytest.raises(ConfigError, match=r"was produced from /x\.mp4, not /y\.mp4"):
        SourcePublisher(client, namespace, "cam", 10**9).open("/y.mp4", restart=False, identity={"sampling": "every=1"})
    assert client.hget(first.keys.meta, "path") == b"/x.mp4"


def test_a_re_sent_append_is_recognised_after_another_producers_append(client: redis.Redis, namespace: str) -> None:
    """The last call's token is a field per producer of a source: another producer's append between a lost reply
    and its re-send does not overwrite it, and the re-sent chunk counts as sent, not skipped."""
    first, second = (SourcePublisher(client, namespace, "cam", 10**9, pack=4) for _ in range(2))
    first.open("/v.mp4", restart=False)
    second.open("/v.mp4", restart=False)
    append = first._append

    def reply_lost_other_appends_then_retried(**kwargs: Any) -> Any:
        append(**kwargs)  # the server ran it; its reply never arrived
        second.send(_frames("cam", range(16, 24)))
        return append(**kwargs)

    first._append = reply_lost_other_appends_then_retried
    first.send(_frames("cam", range(16)))
    assert (first.stats.sent, first.stats.skipped, second.stats.sent) == (16, 0, 8)
    assert [f.seq for _, fields in client.xrange(first.keys.frames) for f in decode_entry(fields)] == list(range(24))
    first.release()
    assert not [f for f in client.hkeys(first.keys.meta) if f.startswith(f"append:{first._token}".encode())]


def test_a_pause_for_the_workers_is_told_when_it_begins_and_ends(client: redis.Redis, namespace: str) -> None:
    """The publisher tells when a pause for the workers begins and ends (the progress bar says "paused" rather
    than sit still with nothing to say why)."""
    import threading

    pub = SourcePublisher(client, namespace, "slow", high_water=4, pack=2)
    pub.open("/videos/slow.mp4", restart=False)
    told: list[bool] = []
    pub.on_pause = told.append
    frames = [Frame.from_pixels("slow", seq, np.zeros((4, 4, 1), np.uint8), float(seq), time.time())
              for seq in range(16)]
    pub.send(frames[:8])  # 4 entries of 2: the lag is now 8 frames, above the mark
    sender = threading.Thread(target=pub.send, args=(frames[8:10],))
    sender.start()
    deadline = time.monotonic() + 10
    while told != [True]:
        assert time.monotonic() < deadline, told
        time.sleep(0.01)
    for _, entries in client.xreadgroup(GROUP, "w", {pub.keys.frames: ">"}):  # a worker takes them all
        client.xack(pub.keys.frames, GROUP, *[entry_id for entry_id, _ in entries])
    sender.join(10)
    assert not sender.is_alive() and told == [True, False] and pub.stats.sent == 10


def test_the_progress_bar_counts_frames_sent_and_says_when_paused() -> None:
    import io

    from rich.console import Console
    from rich.progress import Progress

    from producers.files.producer import _Bar

    with Progress(console=Console(file=io.StringIO())) as progress:
        task = progress.add_task("cam", total=10)
        bar = _Bar(progress, task, "cam")
        bar.advance(4)
        bar.paused(True)
        assert progress.tasks[0].completed == 4 and "paused" in progress.tasks[0].description
        bar.paused(False)
        assert progress.tasks[0].description == "cam"


def test_a_pause_ended_by_a_stop_request_is_told_too(client: redis.Redis, namespace: str) -> None:
    import threading

    from common.errors import Interrupted

    stop = threading.Event()
    pub = SourcePublisher(client, namespace, "stopped", high_water=2, pack=2, stop=stop)
    pub.open("/videos/stopped.mp4", restart=False)
    told: list[bool] = []
    pub.on_pause = lambda paused: (told.append(paused), stop.set())
    frames = [Frame.from_pixels("stopped", seq, np.zeros((4, 4, 1), np.uint8), float(seq), time.time())
              for seq in range(6)]
    pub.send(frames[:4])
    with pytest.raises(Interrupted, match="stopped while paused"):
        pub.send(frames[4:])
    assert told == [True, False]  # the bar does not keep saying "paused" after the run stopped
