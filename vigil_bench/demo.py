"""``vigil demo``: the whole pipeline on a conveyor video of real Fashion-MNIST test images with known labels."""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path

import click
import numpy as np

from common.bundle import Bundle
from common.embedded import broker_url
from common.inference import Classifier
from common.settings import Settings
from common.signals import sigterm_as_interrupt
from vigil_bench.conveyor import FASHION_DIR, build_conveyor
from vigil_bench.runner import PipelineRun


@click.command("demo")
@click.option("--items", type=click.IntRange(10, 10_000), default=500, show_default=True,
              help="Test images on the conveyor.")
@click.option("--hold", type=click.IntRange(1, 100), default=3, show_default=True, help="Frames per item.")
@click.option("-n", "--workers", type=click.IntRange(1, 64), default=None, help="Worker processes (default: cores).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=FASHION_DIR, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def demo(settings: Settings, items: int, hold: int, workers: int | None, data_dir: Path, as_json: bool) -> None:
    """Build a conveyor video, push it producer -> Redis -> workers -> results, and score every frame.

    accuracy_e2e counts a frame right when its published label is the item's true label; accuracy_offline is
    the bundle on the same images without the pipeline (no codec, no broker).
    """
    bundle = Bundle.load(settings.bundle)
    # SIGTERM as Ctrl-C: the worker pool and a private broker are stopped, not left behind
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="vigil-demo-") as tmp:
        conveyor = build_conveyor(Path(tmp) / "conveyor.avi", bundle.spec.input, items, hold, data_dir=data_dir)
        offline = _offline_accuracy(bundle, conveyor.items, conveyor.labels)
        namespace = f"{settings.namespace}-demo-{uuid.uuid4().hex[:6]}"
        with broker_url(settings.redis_url, private=True) as url, \
                PipelineRun(url, namespace, bundle.root, workers or settings.workers) as run:
            stats = run.feed(conveyor.path, "conveyor", conveyor.frames, progress=not as_json and sys.stderr.isatty())
    truth = [bundle.labels[conveyor.label_of_frame(r.seq)] for r in stats.results]
    correct = sum(r.label == t for r, t in zip(stats.results, truth, strict=True))
    report = {
        "accuracy_e2e": round(correct / conveyor.frames, 4),
        "accuracy_offline": round(offline, 4),
        "frames": conveyor.frames,
        "results": len(stats.results),
        "duplicates": len(stats.results) - len({r.seq for r in stats.results}),
        "dead_letters": stats.dead,
        "fps": round(stats.fps, 1),
        "fps_wall": round(stats.wall_fps, 1),
        "workers": workers or settings.workers,
        "bundle": bundle.version,
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"conveyor: {items} Fashion-MNIST test images x {hold} frames = {conveyor.frames} frames (MJPG)")
    click.echo(f"results:  {report['results']} for {report['frames']} frames, {report['duplicates']} duplicates, "
               f"{report['dead_letters']} dead letters")
    click.echo(f"accuracy: end-to-end {report['accuracy_e2e']:.2%}  offline {report['accuracy_offline']:.2%}")
    click.echo(f"speed:    {report['fps']} frames/s streaming, {report['fps_wall']} frames/s incl. process start")


def _offline_accuracy(bundle: Bundle, images: np.ndarray, labels: np.ndarray) -> float:
    clf = Classifier.from_bundle(bundle)
    probs = np.concatenate([clf.predict_proba(images[i:i + 32, :, :, None]) for i in range(0, len(images), 32)])
    return float((probs.argmax(1) == labels).mean())
