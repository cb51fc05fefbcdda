"""``vigil status``: per source, frames produced, lag, pending, results, dead letters and consumers."""

from __future__ import annotations

import json
from typing import Any

import click
import redis

from common.broker import broker_url, connect
from common.settings import Settings
from common.streams import GROUP, SourceKeys, check_source
from workers.results import sources


def source_status(client: redis.Redis, namespace: str, source: str) -> dict[str, Any]:
    keys = SourceKeys(namespace, source)
    meta: Any = client.hgetall(keys.meta)
    row: dict[str, Any] = {
        "source": source, "frames": int(client.xlen(keys.frames)), "results": int(client.xlen(keys.results)),
        "dead": int(client.xlen(keys.dead)), "ended": meta.get(b"eos") == b"1", "lag": None, "pending": None,
        "consumers": 0,
    }
    if client.exists(keys.frames):
        groups: Any = client.xinfo_groups(keys.frames)
        for group in groups:
            if group["name"].decode() == GROUP:
                row.update(lag=group.get("lag"), pending=group["pending"], consumers=group["consumers"])
    return row


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(settings: Settings, as_json: bool) -> None:
    """Show streams, lag, pending, results and dead letters per source."""
    with broker_url(settings.redis_url) as url:
        client = connect(url)
        rows = [source_status(client, settings.namespace, s) for s in sources(client, settings.namespace)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'source':<24}{'frames':>8}{'lag':>8}{'pending':>9}{'results':>9}{'dead':>6}  ended")
    for r in rows:
        click.echo(f"{r['source']:<24}{r['frames']:>8}{r['lag']!s:>8}{r['pending']!s:>9}{r['results']:>9}"
                   f"{r['dead']:>6}  {'yes' if r['ended'] else 'no'}")


@click.command("streams")
@click.argument("names", nargs=-1)
@click.pass_obj
def streams(settings: Settings, names: tuple[str, ...]) -> None:
    """Print the Redis keys of sources (given, or every registered one): for redis-cli, KEDA, dashboards."""
    if not names:
        with broker_url(settings.redis_url) as url:
            names = tuple(sources(connect(url), settings.namespace))
    for name in names:
        keys = SourceKeys(settings.namespace, check_source(name))
        click.echo(json.dumps({"source": name, "frames": keys.frames, "group": GROUP, "results": keys.results,
                               "dead": keys.dead, "meta": keys.meta}))
