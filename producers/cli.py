"""``vigil produce``: push frames into Redis streams."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from common.broker import broker_url, connect
from common.bundle import Bundle
from common.errors import ConfigError
from common.settings import Settings
from producers.file_producer import FileJob, produce_file
from producers.sources import Sampling, default_source_name


@click.group("produce")
def produce() -> None:
    """Push frames from files into Redis streams (one stream per source)."""


@produce.command("file")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--source", default=None, help="Source name (default: the file name). Only with one PATH.")
@click.option("--every", type=click.IntRange(1), default=1, show_default=True, help="Keep every Nth frame.")
@click.option("--fps", type=click.FloatRange(0, min_open=True), default=None, help="Sample to this media rate.")
@click.option("--transport", type=click.Choice(["raw", "jpeg"]), default="raw", show_default=True)
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True)
@click.option("--realtime", is_flag=True, help="Pace frames at media speed (simulate a camera).")
@click.option("--restart", is_flag=True, help="Delete the source's streams and start from frame 0.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a TTY).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report per source.")
@click.pass_obj
def produce_file_cmd(settings: Settings, paths: tuple[Path, ...], source: str | None, every: int,
                     fps: float | None, transport: str, jpeg_quality: int, realtime: bool, restart: bool,
                     progress: bool | None, as_json: bool) -> None:
    """Send the frames of video files or image folders, lossless and resumable, then exit.

    A crashed or killed run continues where it stopped when started again with the same arguments.
    """
    if source and len(paths) > 1:
        raise ConfigError("--source names one source; pass one PATH with it, or omit it.")
    spec = Bundle.load(settings.bundle, verify_hashes=False).spec.input
    show = sys.stderr.isatty() if progress is None else progress
    with broker_url(settings.redis_url) as url:
        client = connect(url)
        for path in paths:
            job = FileJob(path, source or default_source_name(path), spec, Sampling(every, fps),
                          "jpeg" if transport == "jpeg" else "raw", jpeg_quality, restart, realtime)
            report = produce_file(client, settings.namespace, job, settings.high_water, show)
            if as_json:
                click.echo(json.dumps(asdict(report)))
            else:
                click.echo(f"{report.source}: {report.frames} frames ({report.sent} sent now, "
                           f"resumed from {report.resumed_from}) in {report.seconds:.1f}s")
        client.close()
