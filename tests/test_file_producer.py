"""produce_file: image folders and realtime pacing, against a real broker."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis

from common.bundle import InputSpec
from common.schemas import decode_entry
from common.streams import SourceKeys
from producers.file_producer import FileJob, produce_file

pytestmark = pytest.mark.integration
SPEC = InputSpec(height=28, width=28, channels=1, color="gray")


def test_a_folder_of_8_and_16_bit_images_is_sent(client: redis.Redis, namespace: str, tmp_path: Path) -> None:
    for i in range(4):
        pixels = np.full((40, 30), 50 * (i + 1), np.uint8)
        cv2.imwrite(str(tmp_path / f"img{i}.png"), pixels.astype(np.uint16) * 257 if i % 2 else pixels)
    report = produce_file(client, namespace, FileJob(tmp_path, "mixed", SPEC, pack=8), high_water=10_000)
    assert (report.frames, report.sent) == (4, 4)
    frames = [f for _, fields in client.xrange(SourceKeys(namespace, "mixed").frames) for f in decode_entry(fields)]
    assert [f.dtype for f in frames if not f.eos] == ["uint8"] * 4


def test_resumed_realtime_run_does_not_wait_for_the_media_time_already_sent(client: redis.Redis, namespace: str,
                                                                            small_video: Path) -> None:
    produce_file(client, namespace, FileJob(small_video, "full", SPEC, pack=1), high_water=10_000)
    full, resumed = SourceKeys(namespace, "full"), SourceKeys(namespace, "resumed")
    for entry_id, fields in client.xrange(full.frames, count=50):  # killed after 50 frames: 2.0 s of media time
        client.xadd(resumed.frames, fields, id=entry_id)
    client.hset(resumed.meta, "path", str(small_video.resolve()))
    started = time.time()
    report = produce_file(client, namespace, FileJob(small_video, "resumed", SPEC, realtime=True),
                          high_water=10_000)
    assert (report.resumed_from, report.sent) == (50, 10)
    epoch = int(client.xinfo_stream(resumed.frames)["last-generated-id"].split(b"-")[0])
    new = [f for _, fields in client.xrange(resumed.frames, min=f"{epoch}-50", max=f"{epoch}-59")
           for f in decode_entry(fields)]
    assert new[0].produced_at - started < 1.0
    assert new[-1].produced_at - new[0].produced_at >= 9 / 25 - 0.02  # still paced at media speed
