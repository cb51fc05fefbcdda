"""Reading results back: all of a source's results, its dead letters, and label segments over time."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import redis

from common.errors import DecodeError
from common.schemas import RESULT_VERSION, Result
from common.streams import SourceKeys

log = logging.getLogger(__name__)
PAGE = 1000



def iter_stream(client: redis.Redis, key: str, start: str = "-") -> Iterator[tuple[str, dict[Any, Any]]]:
    """Every entry of a stream from ``start`` on, paged."""
    while True:
        page: Any = client.xrange(key, min=start, max="+", count=PAGE)
        for eid, fields in page:
            yield (eid.decode() if isinstance(eid, bytes) else eid), fields
        if len(page) < PAGE:
            return
        last = page[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else last)


@dataclass
class Skipped:
    """Result entries a reader skipped: of a schema version it does not know (counted by version; the schema says
    readers skip those rather than fail), and malformed ones (of a known version, but fields missing or invalid:
    never written by Vigil's workers, so another writer's), each logged by key and id up to SAY_MALFORMED."""

    versions: Counter[str] = field(default_factory=Counter)
    malformed: int = 0


SAY_MALFORMED = 5


def decode_known(key: str, entry_id: str, fields: dict[Any, Any], skipped: Skipped) -> Result | None:
    """The result in ``fields`` (entry ``entry_id`` of stream ``key``), or None when it is skipped (``Skipped``)."""
    version = fields.get(b"v", fields.get("v"))
    version = version.decode(errors="replace") if isinstance(version, bytes) else version
    if version != RESULT_VERSION:
        skipped.versions[repr(version)] += 1
        return None
    try:
        return Result.decode(fields)
    except DecodeError as exc:
        skipped.malformed += 1
        if skipped.malformed <= SAY_MALFORMED:
            log.warning("%s entry %s: skipped, not a valid result (%s); Vigil's workers never write such an entry, "
                        "so another writer did", key, entry_id, exc)
        return None


def warn_skipped(skipped: Skipped, where: str) -> None:
    """One warning for the entries ``decode_known`` skipped by version, and a count of the malformed ones."""
    if skipped.versions:
        versions = ", ".join(f"v={v}: {n}" for v, n in sorted(skipped.versions.items()))
        log.warning("%s: skipped %d results of an unknown schema version (%s); this reader knows version %s. "
                    "Upgrade vigil to read them.", where, skipped.versions.total(), versions, RESULT_VERSION)
    if skipped.malformed > SAY_MALFORMED:
        log.warning("%s: skipped %d malformed result entries in all (the first %d are named above)", where,
                    skipped.malformed, SAY_MALFORMED)


def read_results(client: redis.Redis, namespace: str, source: str, include_eos: bool = False) -> list[Result]:
    """Every result of ``source`` in stream order; entries of an unknown version, or malformed, are skipped with
    a warning."""
    skipped = Skipped()
    key = SourceKeys(namespace, source).results
    decoded = (decode_known(key, eid, f, skipped) for eid, f in iter_stream(client, key))
    out = [r for r in decoded if r is not None and (include_eos or r.type == "result")]
    warn_skipped(skipped, f"source {source}")
    return out


def read_dead(client: redis.Redis, namespace: str, source: str) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()}
            for _, f in iter_stream(client, SourceKeys(namespace, source).dead)]


def dead_frames(dead: list[dict[str, str]]) -> int:
    """Frames the dead letters stand for (a pack that did not decode is one letter for all its frames)."""
    return sum(int(d.get("frames") or 1) for d in dead)


@dataclass(frozen=True)
class Segment:
    """Consecutive frames with one label: frames ``first_seq..last_seq``, from ``start`` (the first's capture
    time) to ``end`` (the last's plus one frame period: where the next frame begins)."""

    label: str
    start: float
    end: float
    frames: int
    mean_score: float
    first_seq: int
    last_seq: int


def segments(results: list[Result]) -> list[Segment]:
    """Runs of the same label over consecutive frames, in frame order. A frame without a result (dead-lettered,
    or a live frame dropped as stale) ends the run, and so does a jump in capture time over two frame periods (a
    camera that was offline numbers its next frame consecutively): nothing is known of the time between."""
    ordered = sorted(results, key=lambda r: r.seq)
    step = frame_period(ordered)
    out: list[Segment] = []
    run: list[Result] = []
    for res in ordered:
        if run and (res.label != run[0].label or res.seq != run[-1].seq + 1
                    or (step > 0 and res.captured_at - run[-1].captured_at > 2 * step)):
            out.append(_segment(run, step))
            run = []
        run.append(res)
    if run:
        out.append(_segment(run, step))
    return out


def frame_period(ordered: list[Result]) -> float:
    """The median capture-time step between consecutive frames (0 when there are none): after sampling, the
    time one frame stands for."""
    steps = sorted(b.captured_at - a.captured_at for a, b in pairwise(ordered) if b.seq == a.seq + 1)
    return steps[len(steps) // 2] if steps else 0.0


def _segment(run: list[Result], step: float) -> Segment:
    return Segment(run[0].label, run[0].captured_at, run[-1].captured_at + step, len(run),
                   sum(r.score for r in run) / len(run), run[0].seq, run[-1].seq)
