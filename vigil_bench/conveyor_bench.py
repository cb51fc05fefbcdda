"""``vigil bench conveyor``: a camera-resolution conveyor video (``vigil_bench/belt.py``) through the real
pipeline, scored three ways on the same items:

* ``accuracy_e2e``: the published labels (producer -> Redis -> workers -> results, the bundle's own
  preprocessing) against the true labels, over frames (a missing result counts as wrong);
* ``accuracy_offline``: the bundle's INT8 model on the photos prepared as a training image would be,
  ``preprocess(photo, spec)`` (Fashion-MNIST: the original 28x28 items);
* ``accuracy_offline_frames``: the same model on the video's own decoded frames, preprocessed here with
  ``common.preprocess``. It isolates the input domain from transport: the pipeline must publish exactly
  these labels (``labels_match_offline_frames`` = 1.0), and offline minus it is what the camera's framing
  costs the model.

``--resize`` runs a temporary copy of the bundle whose spec.json names another resize mode, so that the modes
can be compared on the same video.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np
from rich.progress import Progress

from common.bundle import Bundle, write_spec
from common.embedded import broker_url
from common.errors import DataError
from common.inference import Classifier
from common.preprocess import preprocess
from common.settings import Settings
from common.signals import sigterm_as_interrupt
from vigil_bench.belt import DEFAULT_ITEM_FRACTION, CameraConveyor, Codec, build_camera_conveyor, parse_size
from vigil_bench.conveyor import FASHION_DIR
from vigil_bench.photos import FASHION, Photos, fashion_photos, folder_photos
from vigil_bench.report import emit
from vigil_bench.runner import PipelineRun, RunStats

RESIZE_MODES = ("stretch", "letterbox", "center_crop")


def classify(bundle: Bundle, inputs: np.ndarray) -> np.ndarray:
    """The bundle's INT8 model's labels (indices) for (N, H, W, C) model inputs."""
    probs = Classifier.from_bundle(bundle).predict_bucketed(inputs, max_bucket=64)
    labels: np.ndarray = probs.argmax(axis=1)
    return labels


def photo_labels(bundle: Bundle, photos: Photos) -> np.ndarray:
    """Offline: each photo as training prepares an image, ``preprocess(photo, spec)``, classified."""
    return classify(bundle, np.stack([preprocess(img, bundle.spec.input) for img in photos.images]))


def frame_labels(bundle: Bundle, video: Path) -> np.ndarray:
    """Offline: every decoded frame of ``video``, preprocessed to the bundle's spec, classified."""
    cap = cv2.VideoCapture(str(video))
    inputs = []
    try:
        while True:
            ok, img = cap.read()
            if not ok:
                break
            inputs.append(preprocess(img, bundle.spec.input))
    finally:
        cap.release()
    return classify(bundle, np.stack(inputs))


@contextmanager
def bundle_with_resize(bundle: Bundle, resize: str | None, tmp: Path) -> Iterator[Bundle]:
    """``bundle`` itself, or a copy under ``tmp`` whose spec.json names ``resize``. ``Bundle.load`` hashes the
    files spec.json lists, never spec.json itself, so the copy loads; its version string is unchanged."""
    if resize is None or resize == bundle.spec.input.resize:
        yield bundle
        return
    root = tmp / f"bundle-{resize}"
    shutil.copytree(bundle.root, root)
    spec = bundle.spec.model_copy(update={"input": bundle.spec.input.model_copy(update={"resize": resize})})
    write_spec(root, spec)
    yield Bundle.load(root)


def score(conveyor: CameraConveyor, stats: RunStats, offline: np.ndarray, frames: np.ndarray,
          bundle: Bundle) -> dict[str, Any]:
    """The three accuracies, the gap and the accounting of one run (see the module docstring)."""
    published = {r.seq: r.label for r in stats.results}
    truth = [bundle.labels[conveyor.label_of_frame(seq)] for seq in range(conveyor.frames)]
    e2e = sum(published.get(seq) == t for seq, t in enumerate(truth)) / conveyor.frames
    offline_acc = float((offline == conveyor.labels).mean())
    by_frame = [bundle.labels[i] for i in frames]
    matches = sum(published.get(seq) == label for seq, label in enumerate(by_frame))
    return {
        "accuracy_e2e": round(e2e, 4),
        "accuracy_offline": round(offline_acc, 4),
        "accuracy_offline_frames": round(sum(f == t for f, t in zip(by_frame, truth, strict=True))
                                         / conveyor.frames, 4),
        "gap_points": round((offline_acc - e2e) * 100, 2),
        "labels_match_offline_frames": round(matches / conveyor.frames, 4),
        "frames": conveyor.frames,
        "decoded_frames": len(frames),
        "results": len(stats.results),
        "duplicates": len(stats.results) - len(published),
        "dead_letters": stats.dead,
        "fps": round(stats.fps, 1),
        "fps_wall": round(stats.wall_fps, 1),
    }


def _frame_size(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("conveyor")
@click.option("--bundle", "bundle_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Bundle directory [default: the configured one: `vigil --bundle` or "
                                 "VIGIL_BUNDLE, as `vigil config` shows].")
@click.option("--photos", default=FASHION, show_default=True, metavar="fashion-mnist|FOLDER",
              help="The items: Fashion-MNIST test items, or a folder with one subfolder per class named after "
                   "the bundle's labels (e.g. CIFAR-10's test/).")
@click.option("--items", type=click.IntRange(1, 10_000), default=200, show_default=True,
              help="Items on the belt (random, seeded; all of a folder when it holds fewer).")
@click.option("--hold", type=click.IntRange(1, 100), default=2, show_default=True, help="Frames per item.")
@click.option("--frame-size", "size", default="640x480", show_default=True, callback=_frame_size,
              metavar="WxH", help="Frame size, e.g. 640x480 (4:3) or 1280x720 (16:9).")
@click.option("--item-fraction", type=click.FloatRange(0.1, 1.0), default=DEFAULT_ITEM_FRACTION,
              show_default=True, help="The item's longer side as a fraction of the frame's shorter side.")
@click.option("--codec", type=click.Choice([c.value for c in Codec]), default=Codec.MJPG.value,
              show_default=True, help="mjpg: MJPEG in .avi; mp4v: MPEG-4 Part 2 in .mp4.")
@click.option("--matte", is_flag=True,
              help="Fashion-MNIST only: the garments lie on the belt, their black ground replaced by it, instead "
                   "of photos of them (ground included) on it.")
@click.option("--resize", type=click.Choice(RESIZE_MODES), default=None,
              help="Serve a temporary copy of the bundle whose spec.json says this mode [default: the spec's].")
@click.option("--seed", type=int, default=0, show_default=True, help="Items, belt texture and noise.")
@click.option("-n", "--workers", type=click.IntRange(1, 64), default=None, help="Worker processes (default: cores).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=FASHION_DIR, show_default=True,
              help="Where the Fashion-MNIST idx files are.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Also write the JSON here.")
@click.pass_obj
def conveyor(settings: Settings, bundle_dir: Path | None, photos: str, items: int, hold: int,
             size: tuple[int, int], item_fraction: float, codec: str, matte: bool, resize: str | None, seed: int,
             workers: int | None, data_dir: Path, as_json: bool, output: Path | None) -> None:
    """Score a bundle on a camera's view of a conveyor: end to end through the pipeline, and offline.

    Builds a WxH video of items on a moving textured belt (each centred, its longer side --item-fraction of
    the frame's shorter side, held --hold frames, sensor noise per frame), streams it producer -> Redis ->
    workers -> results through a private broker with the bundle's own preprocessing, and compares
    accuracy_e2e (published labels) with accuracy_offline (the same photos prepared as training images) and
    accuracy_offline_frames (the video's decoded frames, preprocessed offline: equal to e2e unless transport
    lost something). gap_points = offline - e2e, in points.

    \b
    Examples:
      vigil bench conveyor                                   # shipped bundle, Fashion-MNIST, 640x480
      vigil bench conveyor --resize center_crop              # the same video, the spec's mode overridden
      vigil bench conveyor --bundle bundles/cam --photos ~/data/cifar-10/test --frame-size 1280x720
    """
    if matte and photos != FASHION:
        raise click.UsageError("--matte needs --photos fashion-mnist: a folder's photos have no ground to remove.")
    base = Bundle.load(bundle_dir or settings.bundle)
    n = workers or settings.workers
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="vigil-conveyor-") as tmp, \
            bundle_with_resize(base, resize, Path(tmp)) as bundle:
        carried = (fashion_photos(bundle.spec.input, items, seed, data_dir, matte) if photos == FASHION
                   else folder_photos(Path(photos), bundle.labels, items, seed))
        video = Path(tmp) / f"conveyor{Codec(codec).suffix}"
        show = not as_json and sys.stderr.isatty()
        with Progress(disable=not show, transient=True) as bar:
            task = bar.add_task("building", total=len(carried))
            built = build_camera_conveyor(video, carried, hold, size, item_fraction, Codec(codec), seed,
                                          progress=lambda k: bar.advance(task, k))
        offline, frames = photo_labels(bundle, carried), frame_labels(bundle, built.path)
        if len(frames) != built.frames:  # every accuracy counts frames by their sequence number
            raise DataError(f"{built.path}: {len(frames)} frames decode, {built.frames} were written; OpenCV's "
                            f"{codec} writer or decoder is at fault here. Try --codec mjpg.")
        namespace = f"{settings.namespace}-conveyor-{uuid.uuid4().hex[:6]}"
        with broker_url(settings.redis_url, private=True) as url, PipelineRun(url, namespace, bundle.root, n) as run:
            stats = run.feed(built.path, "conveyor", built.frames, show)
        report = {**score(built, stats, offline, frames, bundle), "resize": bundle.spec.input.resize,
                  "spec_resize": base.spec.input.resize, "bundle": base.version, "bundle_name": base.spec.name,
                  "photos": carried.name, "items": len(carried), "hold": hold, "frame_size": f"{size[0]}x{size[1]}",
                  "item_fraction": item_fraction, "matte": matte, "codec": codec, "seed": seed, "workers": n}
    emit(report, as_json, output, _table)


def _table(r: dict[str, Any]) -> str:
    override = "the spec's" if r["resize"] == r["spec_resize"] else f"--resize; the spec says {r['spec_resize']}"
    return "\n".join([
        f"conveyor: {r['items']} items ({r['photos']}) x {r['hold']} frames = {r['frames']} frames, "
        f"{r['frame_size']} {r['codec']}, item {r['item_fraction']:g} of the shorter side"
        f"{', matte' if r['matte'] else ''}",
        f"bundle:   {r['bundle_name']} {r['bundle']}, resize {r['resize']} ({override})",
        f"results:  {r['results']} for {r['frames']} frames, {r['duplicates']} duplicates, {r['dead_letters']} dead "
        f"letters; {r['labels_match_offline_frames']:.2%} of labels equal the offline labels of the decoded frames",
        f"accuracy: end-to-end {r['accuracy_e2e']:.2%}  offline {r['accuracy_offline']:.2%}  offline on the "
        f"decoded frames {r['accuracy_offline_frames']:.2%}  gap {r['gap_points']:g} points",
        f"speed:    {r['fps']} frames/s streaming, {r['fps_wall']} frames/s incl. process start",
    ])
