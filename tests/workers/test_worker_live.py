"""Live-source semantics in the workers, against a real server: stale frames are acked without a result and
counted, file sources never are, live results streams are capped, and the meta counters balance."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter

import numpy as np
import pytest
import redis

from common.broker import ensure_group
from common.schemas import FRAME_FIELD, Frame
from common.streams import GROUP, SourceKeys, registry_key
from tests.helpers import VIGIL, produce, start_workers, wait_ready
from vigil_results.reader import read_dead, read_results
from workers.reader import BatchReader, ReadPolicy
from workers.writer import Kind, Outcome, ResultWriter

pytestmark = pytest.mark.integration
TINY_PIXELS = np.random.default_rng(0).integers(0, 255, (28, 28, 1), dtype=np.uint8)


def live_source(client: redis.Redis, ns: str, source: str, **meta: int) -> SourceKeys:
    """Register a live source the way the camera producer does (meta hash, group, registry)."""
    keys = SourceKeys(ns, source)
    client.hset(keys.meta, mapping={"mode": "live", "state": "online", "state_since": time.time(), **meta})
    ensure_group(client, keys.frames, GROUP)
    client.sadd(registry_key(ns), source)
    return keys


def add_live(client: redis.Redis, keys: SourceKeys, seqs: range, age_s: float = 0.0) -> None:
    """XADD live frames (auto ids) captured ``age_s`` ago, counting them as produced like the producer."""
    pipe = client.pipeline(transaction=False)
    for seq in seqs:
        now = time.time()
        frame = Frame.from_pixels(keys.source, seq, TINY_PIXELS, now - age_s, now)
        pipe.xadd(keys.frames, {FRAME_FIELD: frame.encode()})
        pipe.hincrby(keys.meta, "produced", 1)
    pipe.execute()


def meta_int(client: redis.Redis, keys: SourceKeys, field: str) -> int:
    return int(client.hget(keys.meta, field) or 0)


def wait_settled(client: redis.Redis, keys: SourceKeys, timeout: float = 30.0) -> None:
    """Until every produced entry is accounted for (processed, stale or dead)."""
    deadline = time.monotonic() + timeout
    while sum(meta_int(client, keys, f) for f in ("processed", "dropped_stale", "dead")) \
            < meta_int(client, keys, "produced"):
        assert time.monotonic() < deadline, client.hgetall(keys.meta)
        time.sleep(0.05)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""


def test_stale_live_frames_are_acked_without_result_and_counted(pipeline_env, client, namespace,
                                                                small_video) -> None:
    produce(pipeline_env, small_video, "--every", "6")  # file source "cam": captured_at is media time (1970)
    proc = start_workers(pipeline_env)
    wait_ready(client, namespace, 2)
    keys = live_source(client, namespace, "live", max_age_ms=3000)
    add_live(client, keys, range(0, 20), age_s=60)  # stale before any worker sees them
    add_live(client, keys, range(20, 50))  # fresh
    add_live(client, keys, range(50, 60), age_s=60)
    wait_settled(client, keys)
    stop(proc)

    assert sorted(r.seq for r in read_results(client, namespace, "live")) == list(range(20, 50))
    assert meta_int(client, keys, "dropped_stale") == 30
    assert meta_int(client, keys, "processed") == 30
    assert meta_int(client, keys, "dead") == 0
    assert meta_int(client, keys, "produced") == 60
    assert client.xpending(keys.frames, GROUP)["pending"] == 0
    file_keys = SourceKeys(namespace, "cam")
    assert sorted(r.seq for r in read_results(client, namespace, "cam")) == list(range(10))
    assert meta_int(client, file_keys, "dropped_stale") == 0 and meta_int(client, file_keys, "processed") == 10


def test_file_source_counts_processed_and_dead_but_not_eos(pipeline_env, client, namespace, small_video) -> None:
    produce(pipeline_env, small_video, "--every", "3")  # 20 frames + end of stream
    keys = SourceKeys(namespace, "cam")
    # an id after the producer's (<server ms when it began>-<seq>)
    client.xadd(keys.frames, {b"f": b"\xc1not msgpack"}, id="9999999999999-0")
    proc = start_workers(pipeline_env, "--burst")
    assert proc.wait(60) == 0
    assert meta_int(client, keys, "processed") == len(read_results(client, namespace, "cam")) == 20
    assert meta_int(client, keys, "dead") == len(read_dead(client, namespace, "cam")) == 1
    assert meta_int(client, keys, "dropped_stale") == 0


def test_live_results_stream_is_capped(pipeline_env, client, namespace) -> None:
    keys = live_source(client, namespace, "live", max_age_ms=60_000, results_maxlen=20)
    add_live(client, keys, range(600))
    proc = start_workers(pipeline_env)
    wait_settled(client, keys)
    stop(proc)
    assert meta_int(client, keys, "processed") == 600
    # MAXLEN ~ trims whole stream nodes (stream-node-max-entries, 100 by default): the cap is approximate
    assert 20 <= int(client.xlen(keys.results)) <= 20 + 100
    newest = read_results(client, namespace, "live")
    assert max(r.seq for r in newest) == 599  # the newest results are the ones kept


def test_stale_outcome_is_counted_once_across_redeliveries(client, namespace) -> None:
    keys = live_source(client, namespace, "live", max_age_ms=100)
    add_live(client, keys, range(3), age_s=10)
    read = client.xreadgroup(GROUP, "w", {keys.frames: ">"})
    ids = [eid.decode() for eid, _ in read[0][1]]
    writer = ResultWriter(client, namespace)
    stale = [Outcome("live", eid, Kind.STALE, {}) for eid in ids]
    assert writer.publish(stale)["live"].stale == 3
    assert writer.publish(stale)["live"].stale == 0  # a slow worker's second copy: already acked
    assert meta_int(client, keys, "dropped_stale") == 3
    assert int(client.xlen(keys.results)) == 0


def test_two_flooding_cameras_share_every_batch(client, namespace) -> None:
    a, b = live_source(client, namespace, "a"), live_source(client, namespace, "b")
    add_live(client, a, range(100))
    add_live(client, b, range(100))
    reader = BatchReader(client, namespace, "t", ReadPolicy(max_wait_ms=0))  # max_batch = per_source_cap = 32
    batches = []
    while batch := reader.next_batch():
        batches.append(Counter(e.source for e in batch))
    assert all(c["a"] and c["b"] for c in batches[:6]), batches  # both cameras in each batch while both flood
    assert batches[0] == {"a": 16, "b": 16}
    assert sum(c["a"] for c in batches) == sum(c["b"] for c in batches) == 100


def test_reader_keeps_each_sources_order_when_interleaving(client, namespace) -> None:
    a, b = live_source(client, namespace, "a"), live_source(client, namespace, "b")
    add_live(client, a, range(40))
    add_live(client, b, range(5))
    reader = BatchReader(client, namespace, "t", ReadPolicy(max_batch=10, per_source_cap=8, max_wait_ms=0))
    seen: dict[str, list[str]] = {"a": [], "b": []}
    while batch := reader.next_batch():
        assert len(batch) <= 10 and max(Counter(e.source for e in batch).values()) <= 8
        for e in batch:
            seen[e.source].append(e.entry_id)
    for name, keys in (("a", a), ("b", b)):
        assert seen[name] == [eid.decode() for eid, _ in client.xrange(keys.frames)]


def test_vigil_work_help_mentions_stale_and_metrics() -> None:
    out = subprocess.run([*VIGIL, "work", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--metrics-port" in out and "dropped_stale" in out
