"""``vigil status``: per source, camera state, stream backlog, throughput, counters and consumers.

Everything is read from the broker with cheap commands (HGETALL meta, XLEN, XINFO GROUPS/CONSUMERS, one
bounded XREVRANGE for throughput), so it is safe to run against a busy pipeline, also with ``--watch``.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import click
import redis
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from common.broker import connect
from common.embedded import broker_url
from common.groups import group_state, sources
from common.settings import Settings
from common.streams import GROUP, SourceKeys, check_source

THROUGHPUT_WINDOW_S = 10.0
THROUGHPUT_SAMPLE = 200  # newest result ids fetched at most; past that the rate comes from their time span
READING_WITHIN_S = 30.0  # a running worker reads every block_ms (<= 2 s); longer: killed, hung or cut off
PRODUCER_GONE_S = 15.0  # a camera producer writes producer_seen 4 times a second; allows for clock skew too
COUNTERS = ("captured", "produced", "processed", "dead", "reconnects")
DROP_REASONS = ("superseded", "unpublished", "trimmed", "stale")




def consumers(client: redis.Redis, frames: str) -> list[dict[str, Any]]:
    try:
        reply: Any = client.xinfo_consumers(frames, GROUP)
    except redis.ResponseError:  # no stream or no group yet
        return []
    return [{"name": c["name"].decode(), "pending": int(c["pending"]), "idle_ms": int(c["idle"]),
             "inactive_ms": c.get("inactive"), "reading": _reading(c)} for c in reply]


def _reading(consumer: dict[str, Any]) -> bool | None:
    """Whether the consumer still reads, or None when the server cannot tell. Servers that report ``inactive``
    (Redis >= 7.2, Valkey) reset ``idle`` on every read attempt, and a running worker reads at least every
    block_ms; Redis 7.0 resets it only when a read delivers, so an idle but healthy worker looks the same as a
    dead one there."""
    if "inactive" not in consumer:
        return None
    return int(consumer["idle"]) <= READING_WITHIN_S * 1000


def results_per_s(client: redis.Redis, results: str, now_ms: int) -> float:
    """Results per second over the last ~10 s, from the millisecond part of the newest result ids."""
    window_ms = int(THROUGHPUT_WINDOW_S * 1000)
    newest: Any = client.xrevrange(results, "+", str(now_ms - window_ms), count=THROUGHPUT_SAMPLE)
    if len(newest) < THROUGHPUT_SAMPLE:
        return len(newest) / THROUGHPUT_WINDOW_S
    oldest_ms = int(newest[-1][0].split(b"-")[0])
    return len(newest) / max(0.001, (now_ms - oldest_ms) / 1000)


def _int(meta: dict[bytes, bytes], field: str) -> int:
    raw = meta.get(field.encode())
    return int(raw) if raw else 0


def source_status(client: redis.Redis, namespace: str, source: str, now_ms: int | None = None) -> dict[str, Any]:
    keys = SourceKeys(namespace, source)
    if now_ms is None:
        now_ms = _server_ms(client)
    meta: Any = client.hgetall(keys.meta)
    live = meta.get(b"mode") == b"live"
    since = meta.get(b"state_since")
    ended = meta.get(b"eos") == b"1"
    # Cameras write their state; a file source has none, only eos once its producer reached the end.
    state = (meta.get(b"state") or b"").decode() or ("ended" if ended else None)
    reason = (meta.get(b"state_reason") or b"").decode() or None
    seen = meta.get(b"producer_seen")
    if live and state != "offline" and seen and now_ms / 1000 - float(seen) > PRODUCER_GONE_S:
        # A killed producer records nothing: its last state ("online") would stand for good.
        state, reason = "offline", f"producer not seen for {now_ms / 1000 - float(seen):.0f} s (killed or cut off?)"
    row: dict[str, Any] = {
        "source": source, "mode": "live" if live else "file",
        "state": state,
        "state_since": float(since) if since else None,
        "state_reason": reason,
        "url": (meta.get(b"url") or meta.get(b"path") or b"").decode() or None,
        "ended": ended,
        "entries": int(client.xlen(keys.frames)), **group_state(client, keys.frames),
        "results": int(client.xlen(keys.results)), "results_per_s": round(results_per_s(client, keys.results,
                                                                                         now_ms), 2),
        "dead": int(client.xlen(keys.dead)),
        "counters": {name: _int(meta, name) for name in COUNTERS},
        "dropped": {reason: _int(meta, f"dropped_{reason}") for reason in DROP_REASONS},
        "consumers": consumers(client, keys.frames),
    }
    return row


def _server_ms(client: redis.Redis) -> int:
    """The broker's clock: result ids carry its milliseconds, not ours."""
    secs, micros = client.time()
    return int(secs) * 1000 + int(micros) // 1000


def snapshot(client: redis.Redis, namespace: str) -> list[dict[str, Any]]:
    now_ms = _server_ms(client)
    return [source_status(client, namespace, s, now_ms) for s in sources(client, namespace)]


def _ago(since: float | None, now: float) -> str:
    if since is None:
        return ""
    return _duration(max(0.0, now - since))


def _duration(secs: float) -> str:
    return f"{secs:.0f}s" if secs < 120 else f"{secs / 60:.0f}m" if secs < 7200 else f"{secs / 3600:.1f}h"


def render(rows: list[dict[str, Any]]) -> Table:
    now = time.time()
    table = Table(title="vigil status", title_justify="left", box=box.SIMPLE_HEAD,
                  caption="entries, lag, pending: stream entries (a camera's holds 1 frame, a file's up to "
                          "pack_frames); produced, processed, dead: frames", caption_justify="left")
    for name in ("source", "mode", "state", "entries", "lag", "pending", "results", "res/s", "produced",
                 "processed", "dropped", "dead", "consumers (idle)"):
        text = name in ("source", "state", "dropped", "consumers (idle)")
        table.add_column(name, justify="left" if text or name == "mode" else "right", no_wrap=not text)
    for r in rows:
        state = r["state"] or "-"
        if r["state_since"] is not None:
            state += f" {_ago(r['state_since'], now)}"
        dropped = " ".join(f"{k} {v}" for k, v in r["dropped"].items() if v) or "0"
        cons = "\n".join(_consumer(c) for c in r["consumers"]) or "-"
        table.add_row(r["source"], r["mode"], state, str(r["entries"]), _dash(r["lag"]), _dash(r["pending"]),
                      str(r["results"]), f"{r['results_per_s']:.1f}", str(r["counters"]["produced"]),
                      str(r["counters"]["processed"]), dropped, str(r["counters"]["dead"]), cons)
    return table


def _consumer(c: dict[str, Any]) -> str:
    idle = c["idle_ms"] / 1000
    if c["reading"] is not False:
        return f"{c['name']} {idle:.1f}s"
    return f"{c['name']} {_duration(idle)}: not reading, gone?"


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per source (keys above).")
@click.option("--watch", type=click.FloatRange(0.2), default=None, metavar="SECONDS",
              help="Refresh every SECONDS until Ctrl-C (with --json: one JSON line per refresh).")
@click.pass_obj
def status(settings: Settings, as_json: bool, watch: float | None) -> None:
    """Show every source: camera state, backlog, throughput, counters and the consumers reading it.

    \b
    Columns (and --json keys):
      mode, state        live (camera) or file; camera state (connecting|online|offline) and for how long
                         (state_since, state_reason, url); a file source: ended once its producer read
                         the whole file (ended: true), else - (null)
      entries            entries in the frames stream (live streams are capped; a file producer trims the
                         processed ones when it reads the lag); a camera's entry is one frame, a file
                         producer's a pack of up to pack_frames (16)
      lag, pending       entries not yet delivered to the `workers` group; delivered but not acked yet
      results, res/s     results stream length; results per second over the last ~10 s
      produced,
      processed, dead    meta counters (counters.*): frames sent, results written, dead letters; a file
                         source's produced and results count its end-of-stream marker too (300 frames:
                         produced 301, processed 300, results 301)
      dropped            frames dropped by reason (dropped.*): superseded (a newer camera frame replaced it
                         before sampling), unpublished (sampled while the broker was unreachable), trimmed
                         (live cap), stale (older than max_age_ms at the worker)
      consumers          worker processes of the group with their idle time (consumers[].idle_ms); on
                         Redis >= 7.2 and Valkey, one that has not read for over 30 s (consumers[].reading
                         false; null on Redis 7.0, which cannot tell) is marked "gone?": a running worker
                         reads at least every block_ms. A killed worker cannot leave the group; the janitor
                         deletes it once it has been idle forget_idle_ms with nothing pending
    A drained live source: produced == processed + dropped.trimmed + dropped.stale + dead; a drained file
    source: produced == processed + dead + 1.

    \b
    Examples:
      vigil status
      vigil status --watch 2
      vigil status --json | jq '.[] | {source, lag, results_per_s}'
    """
    with broker_url(settings.redis_url, read_only=True) as url:
        client = connect(url)
        if watch is None:
            rows = snapshot(client, settings.namespace)
            _show(rows, as_json)
            if not rows and not as_json:
                click.echo(f"no sources under namespace {settings.namespace!r} (VIGIL_NAMESPACE); "
                           "`vigil produce` registers one.", err=True)
            return
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --watch: a normal exit
            _watch(client, settings.namespace, as_json, watch)


def _console() -> Console:
    console = Console()
    # Piped to a file or a log: wide lines, not a table squeezed into 80 columns.
    return console if console.is_terminal else Console(width=200)


def _show(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _console().print(render(rows))


def _watch(client: redis.Redis, namespace: str, as_json: bool, every: float) -> None:
    if as_json:
        while True:
            click.echo(json.dumps(snapshot(client, namespace)))
            time.sleep(every)
    with Live(render(snapshot(client, namespace)), console=_console(), auto_refresh=False) as live:
        while True:
            time.sleep(every)
            live.update(render(snapshot(client, namespace)), refresh=True)


@click.command("streams")
@click.argument("names", nargs=-1)
@click.pass_obj
def streams(settings: Settings, names: tuple[str, ...]) -> None:
    """Print the Redis keys of sources (given, or every registered one): for redis-cli, KEDA, dashboards."""
    if not names:
        with broker_url(settings.redis_url, read_only=True) as url:
            names = tuple(sources(connect(url), settings.namespace))
    for name in names:
        keys = SourceKeys(settings.namespace, check_source(name))
        click.echo(json.dumps({"source": name, "frames": keys.frames, "group": GROUP, "results": keys.results,
                               "dead": keys.dead, "meta": keys.meta}))
