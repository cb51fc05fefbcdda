"""``vigil results``: follow, export and summarise results (the schema is in docs/results-schema.md)."""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import click
import redis

from common.broker import connect
from common.bundle import Bundle
from common.embedded import broker_url
from common.errors import BundleError, ConfigError
from common.groups import sources
from common.schemas import RESULT_VERSION, Result
from common.settings import Settings
from common.signals import sigterm_as_interrupt
from common.streams import SourceKeys, check_source
from vigil_results.reader import Skipped, decode_known, read_results, segments, warn_skipped

CSV_FIELDS = ["source", "frame_id", "seq", "label", "score", "captured_at", "produced_at", "inferred_at",
              "model_version", "worker", "topk"]
log = logging.getLogger(__name__)


@click.group("results")
def results() -> None:
    """Tail, export and summarise classification results."""


def _sources(client: redis.Redis, settings: Settings, source: str | None) -> list[str]:
    return [source] if source else sources(client, settings.namespace)


def _unknown_source(client: redis.Redis, settings: Settings, source: str) -> str | None:
    """Why ``source`` is not one of the namespace's registered sources, or None when it is."""
    known = sources(client, settings.namespace)
    if check_source(source) in known:
        return None
    listed = f"known sources: {', '.join(known)}" if known else "no source is registered there yet"
    return f"source {source!r} is not registered under namespace {settings.namespace!r} ({listed})"


def _known_sources(client: redis.Redis, settings: Settings, source: str | None) -> list[str]:
    """--source checked against the registry (or every registered source); a typo is an error, not silence."""
    if source and (problem := _unknown_source(client, settings, source)):
        raise ConfigError(f"{problem}. Pass a registered source to --source (`vigil status` lists them) "
                          "or check VIGIL_NAMESPACE.")
    return _sources(client, settings, source)


def _note_if_none(names: list[str], settings: Settings) -> None:
    if not names:
        click.echo(f"no sources under namespace {settings.namespace!r} (VIGIL_NAMESPACE); "
                   "`vigil produce` registers one.", err=True)


def _check_label(settings: Settings, label: str) -> None:
    try:
        labels = Bundle.load(settings.bundle, verify_hashes=False).labels
    except BundleError as exc:  # tail needs no model: without a readable bundle the label cannot be checked
        log.warning("cannot check --label %r against the bundle's labels: %s", label, exc)
        return
    if label not in labels:
        raise ConfigError(f"--label {label!r} is not a label of the bundle {settings.bundle}; valid labels: "
                          f"{', '.join(labels)}. (If the workers run another bundle, set VIGIL_BUNDLE to it.)")


@results.command("tail")
@click.option("--source", default=None,
              help="Only this source. One not registered yet gets a warning and is waited for: a producer "
                   "registers its source when it starts.")
@click.option("--label", default=None, help="Only this label (one of the bundle's labels).")
@click.option("--min-score", type=click.FloatRange(0.0, 1.0), default=0.0,
              help="Only results at least this confident.")
@click.option("--from-start", is_flag=True, help="Replay existing results first (default: new ones only).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--max", "limit", type=click.IntRange(min=1), default=None, help="Exit after this many lines.")
@click.pass_obj
def tail(settings: Settings, source: str | None, label: str | None, min_score: float, from_start: bool,
         as_json: bool, limit: int | None) -> None:
    """Follow results as workers publish them (Ctrl-C stops).

    Each line: source, frame seq, label, score, t= the frame's capture time (media seconds for a file, Unix
    time for a camera), and the latency from the producer sending it to the worker's result.

    \b
    Examples:
      vigil results tail
      vigil results tail --source gate --label bag --min-score 0.8
      vigil results tail --from-start --max 100 --json | jq -r .label
    """
    if label:
        _check_label(settings, label)
    with sigterm_as_interrupt(), broker_url(settings.redis_url, read_only=True) as url:
        client = connect(url)
        problem = _unknown_source(client, settings, source) if source else None
        shown = 0
        # Concrete ids, never "$": "$" on every XREAD loses what is added between two calls, and a client blocked
        # on several streams is woken with one stream's entries. Sources that appear later are read from 0-0.
        keys = [SourceKeys(settings.namespace, name).results for name in _sources(client, settings, source)]
        cursors: dict[str, str] = {} if from_start else {key: _last_id(client, key) for key in keys}
        if problem:  # after the cursors: a result written once this is said must not fall before them
            log.warning("results tail: %s; waiting for it to appear.", problem)
        skipped = Skipped()
        if not source and not keys:
            log.warning("results tail: no source is registered under namespace %r yet (VIGIL_NAMESPACE); waiting "
                        "for one: `vigil produce` registers its source when it starts.", settings.namespace)
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
                        res = decode_known(stream.decode(), eid.decode(), fields, skipped)
                        if (res is not None and res.type == "result" and (not label or res.label == label)
                                and res.score >= min_score and (limit is None or shown < limit)):
                            click.echo(_line(res, as_json))
                            shown += 1
        finally:
            warn_skipped(skipped, "results tail")


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


def _json(res: Result) -> str:
    """One result as a JSON object: the schema version, then the typed fields (topk as [[label, p], ...])."""
    return json.dumps({"v": RESULT_VERSION, **asdict(res)})


def _line(res: Result, as_json: bool) -> str:
    if as_json:
        return _json(res)
    latency_ms = (res.inferred_at - res.produced_at) * 1000
    return (f"{res.source:<16} {res.seq:>7} {res.label:<14} {res.score:6.3f}  "
            f"t={res.captured_at:8.2f}s  latency {latency_ms:6.1f} ms")


@results.command("export")
@click.option("--source", default=None, help="Only this source (default: all).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File (default: stdout). Its directory must exist.")
@click.pass_obj
def export(settings: Settings, source: str | None, fmt: str, output: Path | None) -> None:
    """Write every result, in frame order per source, as JSON lines or CSV.

    \b
    Examples:
      vigil results export -o results.jsonl
      vigil results export --source gate --format csv -o gate.csv
    """
    if output and not output.parent.is_dir():  # like curl -o and sort -o: no directories made behind the user's back
        raise ConfigError(f"--output {output}: directory {output.parent} does not exist. Create it first "
                          f"(mkdir -p {output.parent}) or pick another path.")
    with broker_url(settings.redis_url, read_only=True) as url:
        client = connect(url)
        names = _known_sources(client, settings, source)
        out: TextIO = _open_output(output) if output else sys.stdout
        _note_if_none(names, settings)
        try:
            writer = csv.DictWriter(out, CSV_FIELDS, extrasaction="ignore") if fmt == "csv" else None
            if writer:
                writer.writeheader()
            for name in names:
                for res in sorted(read_results(client, settings.namespace, name), key=lambda r: r.seq):
                    if writer:
                        writer.writerow(res.encode())
                    else:
                        out.write(_json(res) + "\n")
        finally:
            if output:
                out.close()


def _open_output(path: Path) -> TextIO:
    try:
        return path.open("w", newline="")
    except OSError as exc:
        raise ConfigError(f"--output {path}: cannot write it ({exc.strerror}). Pick a writable path.") from exc


@results.command("summary")
@click.option("--source", default=None, help="Only this source (default: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: source -> list of segments.")
@click.pass_obj
def summary(settings: Settings, source: str | None, as_json: bool) -> None:
    """Per source: label segments over time (consecutive frames with the same label).

    A segment runs from its first frame's capture time to where the frame after its last one begins; a frame
    with no result (dead-lettered, or a camera frame dropped as stale) ends it. Times are media seconds for a
    file and clock times for a camera.

    \b
    Examples:
      vigil results summary
      vigil results summary --source gate --json | jq '.gate[] | select(.label == "bag")'
    """
    with broker_url(settings.redis_url, read_only=True) as url:
        client = connect(url)
        names = _known_sources(client, settings, source)
        report = {name: [asdict(s) for s in segments(read_results(client, settings.namespace, name))]
                  for name in names}
        metas: dict[str, dict[bytes, bytes]] = {
            name: client.hgetall(SourceKeys(settings.namespace, name).meta) for name in names}  # type: ignore[misc]
    _note_if_none(list(report), settings)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for name, segs in report.items():
        meta = metas[name]
        live = meta.get(b"mode") == b"live"
        with_result = sum(s["frames"] for s in segs)
        click.echo(f"{name}: {with_result} frames with a result, {len(segs)} segments{_capped(meta, with_result)}")
        for s in segs:
            span = f"{_when(s['start'], live)} - {_when(s['end'], live)}"
            click.echo(f"  {span}  frames {s['first_seq']:>6}-{s['last_seq']:<6} {s['label']:<14} "
                       f"{s['frames']:>5} frames  mean score {s['mean_score']:.3f}")


def _when(t: float, live: bool) -> str:
    """Media seconds for a file; local clock time for a camera (its capture times are Unix times)."""
    if live:
        t = round(t, 2)
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f"{t:.2f}"[-3:]
    return f"{t:8.2f}s"


def _capped(meta: dict[bytes, bytes], with_result: int) -> str:
    """A note when a camera's capped results stream no longer holds every result it got."""
    processed = int(meta.get(b"processed", b"0") or 0)
    if b"results_maxlen" in meta and processed > with_result:
        return (f" (of {processed} processed: its results stream keeps about the newest "
                f"{int(meta[b'results_maxlen'])})")
    return ""
