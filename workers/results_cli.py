"""``vigil results``: follow, export and summarise results (the schema is in docs/results-schema.md)."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import click
import redis

from common.broker import broker_url, connect
from common.schemas import Result
from common.settings import Settings
from common.streams import SourceKeys
from workers.results import decode_known, read_results, segments, sources, warn_unknown

CSV_FIELDS = ["source", "frame_id", "seq", "label", "score", "captured_at", "produced_at", "inferred_at",
              "model_version", "worker", "topk"]


@click.group("results")
def results() -> None:
    """Tail, export and summarise classification results."""


def _sources(client: redis.Redis, settings: Settings, source: str | None) -> list[str]:
    return [source] if source else sources(client, settings.namespace)


@results.command("tail")
@click.option("--source", default=None, help="Only this source.")
@click.option("--label", default=None, help="Only this label.")
@click.option("--min-score", type=float, default=0.0, help="Only results at least this confident.")
@click.option("--from-start", is_flag=True, help="Replay existing results first (default: new ones only).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--max", "limit", type=int, default=None, help="Exit after this many lines.")
@click.pass_obj
def tail(settings: Settings, source: str | None, label: str | None, min_score: float, from_start: bool,
         as_json: bool, limit: int | None) -> None:
    """Follow results as workers publish them (Ctrl-C stops)."""
    with broker_url(settings.redis_url) as url:
        client = connect(url)
        shown = 0
        # Concrete ids, never "$": "$" on every XREAD loses what is added between two calls, and a client blocked
        # on several streams is woken with one stream's entries. Sources that appear later are read from 0-0.
        keys = [SourceKeys(settings.namespace, name).results for name in _sources(client, settings, source)]
        cursors: dict[str, str] = {} if from_start else {key: _last_id(client, key) for key in keys}
        unknown: Counter[str] = Counter()
        try:
            while limit is None or shown < limit:
                for name in _sources(client, settings, source):
                    cursors.setdefault(SourceKeys(settings.namespace, name).results, "0-0")
                if not cursors:
                    time.sleep(0.5)
                    continue
                reply: Any = client.xread(dict(cursors), count=100, block=1000)  # type: ignore[arg-type]
                for stream, entries in reply or []:
                    for eid, fields in entries:
                        cursors[stream.decode()] = eid.decode()
                        res = decode_known(fields, unknown)
                        if (res is not None and res.type == "result" and (not label or res.label == label)
                                and res.score >= min_score and (limit is None or shown < limit)):
                            click.echo(_line(res, as_json))
                            shown += 1
        finally:
            warn_unknown(unknown, "results tail")


def _last_id(client: redis.Redis, key: str) -> str:
    """The id of the newest entry ``key`` ever had; "0-0" when the stream does not exist yet."""
    try:
        info: Any = client.xinfo_stream(key)
    except redis.ResponseError as exc:
        if "no such key" not in str(exc).lower():
            raise
        return "0-0"
    last = info["last-generated-id"]
    return last.decode() if isinstance(last, bytes) else str(last)


def _line(res: Result, as_json: bool) -> str:
    if as_json:
        return json.dumps(asdict(res))
    latency_ms = (res.inferred_at - res.produced_at) * 1000
    return (f"{res.source:<16} {res.seq:>7} {res.label:<14} {res.score:6.3f}  "
            f"t={res.captured_at:8.2f}s  {latency_ms:6.1f} ms")


@results.command("export")
@click.option("--source", default=None, help="Only this source (default: all).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="File (default: stdout).")
@click.pass_obj
def export(settings: Settings, source: str | None, fmt: str, output: Path | None) -> None:
    """Write every result, in frame order per source, as JSON lines or CSV."""
    with broker_url(settings.redis_url) as url:
        client = connect(url)
        out: TextIO = output.open("w", newline="") if output else sys.stdout
        try:
            writer = csv.DictWriter(out, CSV_FIELDS, extrasaction="ignore") if fmt == "csv" else None
            if writer:
                writer.writeheader()
            for name in _sources(client, settings, source):
                for res in sorted(read_results(client, settings.namespace, name), key=lambda r: r.seq):
                    if writer:
                        writer.writerow(res.encode())
                    else:
                        out.write(json.dumps(asdict(res)) + "\n")
        finally:
            if output:
                out.close()


@results.command("summary")
@click.option("--source", default=None, help="Only this source (default: all).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def summary(settings: Settings, source: str | None, as_json: bool) -> None:
    """Per video: label segments over media time (consecutive frames with the same label)."""
    with broker_url(settings.redis_url) as url:
        client = connect(url)
        report = {name: [asdict(s) for s in segments(read_results(client, settings.namespace, name))]
                  for name in _sources(client, settings, source)}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for name, segs in report.items():
        click.echo(f"{name}: {sum(s['frames'] for s in segs)} frames, {len(segs)} segments")
        for s in segs:
            click.echo(f"  {s['start']:8.2f}s - {s['end']:8.2f}s  {s['label']:<14} {s['frames']:>5} frames  "
                       f"mean score {s['mean_score']:.3f}")
