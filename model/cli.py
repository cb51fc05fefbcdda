"""``vigil model``: thin click entry points over the model library (train -> prune -> quantize -> bundle)."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from common.errors import ConfigError
from model.options import POSITIVE, data_options, load_data, train_config, train_options


def _command_line() -> str:
    return shlex.join(["vigil", *sys.argv[1:]])


@click.group()
def model() -> None:
    """Collect, train, compress, quantize, evaluate and bundle classification models (needs the [train] extra,
    except `evaluate`, which runs on LiteRT alone, and `collect`)."""


@model.command()
@data_options
@train_options
@click.option("--arch", default="vgg-bn", show_default=True,
              help="baseline-cnn, vgg-bn, mobilenet-v2-style, keras-mobilenet-v2, keras-mobilenet-v3-small, ...")
@click.option("--width", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Width multiplier.")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Local weights file for keras-* architectures.")
@click.option("--backbone-size", type=click.IntRange(32, 512), default=None,
              help="keras-* architectures: the resolution the backbone runs at (the --size input is resized inside "
                   "the model)  [default: 96].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
def train(data: str, data_path: Path | None, arch: str, width: float, weights: Path | None,
          backbone_size: int | None, out: Path, **kw: Any) -> None:
    """Train a float model; writes model.keras.h5, config.json (with the input spec and the augmentation),
    history, curves.png, metrics.json.

    \b
    Examples:
      vigil model train --out runs/vgg-bn                      # Fashion-MNIST, 28x28 gray
      vigil model train --data cifar/train --test-data cifar/test --size 96 --out runs/cifar
      vigil model train --data gate/ --size 120 160 --resize letterbox --out runs/gate   # whole 4:3 frames
    """
    from model.pipeline import train_run

    result = train_run(load_data(data, data_path, kw["seed"]), arch, train_config(**kw), out,
                       command=_command_line(), width=width, weights=weights, backbone_size=backbone_size)
    click.echo(json.dumps(result, indent=2))


@model.command()
@data_options
@train_options
@click.option("--teacher", "model_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="The teacher: a trained run's model.keras.h5 (its run's input spec is the student's).")
@click.option("--arch", default="camera-vgg", show_default=True, help="The student's architecture.")
@click.option("--width", type=click.FloatRange(0, min_open=True), default=0.5, show_default=True,
              help="The student's width multiplier.")
@click.option("--temperature", type=click.FloatRange(1), default=4.0, show_default=True,
              help="Softens both models' logits: higher shows more of how the teacher ranks the wrong classes.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="Weight of the teacher's soft targets; 1 - alpha goes to the labels.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
def distill(data: str, data_path: Path | None, model_path: Path, arch: str, width: float, temperature: float,
            alpha: float, out: Path, **kw: Any) -> None:
    """Train a small student from a larger teacher's softened logits (knowledge distillation); then
    `vigil model structured` and `bundle` take the student like any trained model.

    \b
    Example:
      vigil model distill --data cifar/train --test-data cifar/test --teacher runs/teacher/model.keras.h5 \\
          --arch camera-vgg --width 0.5 --out runs/student-distilled
    """
    from model.pipeline import distill_run

    result = distill_run(load_data(data, data_path, kw["seed"]), model_path, arch, width, train_config(**kw),
                         out, temperature=temperature, alpha=alpha, command=_command_line())
    click.echo(json.dumps(result, indent=2))


@model.command("prune")
@data_options
@train_options
@click.option("--model", "model_path", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--sparsity", type=click.FloatRange(0, 1, max_open=True), default=0.8, show_default=True,
              help="Final weight sparsity of Conv2D/Dense.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
def prune_cmd(data: str, data_path: Path | None, model_path: Path, sparsity: float, out: Path, **kw: Any) -> None:
    """Magnitude pruning (tfmot, PolynomialDecay) + fine-tune + strip; writes a per-layer sparsity report."""
    from model.pipeline import prune_run

    result = prune_run(load_data(data, data_path, kw["seed"]), model_path, sparsity, train_config(**kw), out,
                       command=_command_line())
    click.echo(json.dumps(result, indent=2))


@model.command("recalibrate-bn")
@data_options
@click.option("--model", "model_path", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--images", type=click.IntRange(128), default=2048, show_default=True,
              help="Training images whose batch statistics become the BN moving statistics.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory for the result.")
def recalibrate_bn_cmd(data: str, data_path: Path | None, model_path: Path, images: int, out: Path) -> None:
    """Re-estimate BatchNorm moving statistics of a trained model (weights untouched).

    For models whose validation accuracy sits at chance while training accuracy climbs: after a short run
    the moving statistics lag the weights. `vigil model train` does this itself for keras-* backbones.
    """
    from model.pipeline import load_keras, save_run
    from model.train import recalibrate_bn

    dataset = load_data(data, data_path)
    model = load_keras(model_path)
    layers, used = recalibrate_bn(model, dataset.train.x[:images])
    result = save_run(model, dataset, out, {"parent": str(model_path), "bn_recalibrated": {"layers": layers,
                      "images": used}}, parent=str(model_path), command=_command_line())
    click.echo(json.dumps(result, indent=2))


@model.command("structured")
@data_options
@train_options
@click.option("--model", "model_path", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--keep", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Fraction of channels kept in every conv layer.")
@click.option("--criterion", type=click.Choice(["bn-gamma", "l1"]), default="bn-gamma", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def structured_cmd(data: str, data_path: Path | None, model_path: Path, keep: float, criterion: str, out: Path,
                   **kw: Any) -> None:
    """Structured pruning: drop the least important filters, rebuild a thinner model, fine-tune."""
    from model.pipeline import structured_run

    result = structured_run(load_data(data, data_path, kw["seed"]), model_path, keep, criterion,
                            train_config(**kw), out, command=_command_line())
    click.echo(json.dumps(result, indent=2))


@model.command()
@data_options
@train_options
@click.option("--model", "model_path", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--no-preserve-sparsity", is_flag=True, help="Plain QAT instead of pruning-preserving QAT.")
@click.option("--samples", type=POSITIVE, default=300, show_default=True, help="Calibration images for the converter.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
def qat(data: str, data_path: Path | None, model_path: Path, no_preserve_sparsity: bool, samples: int, out: Path,
        **kw: Any) -> None:
    """Quantization-aware fine-tuning (pruning-preserving by default) -> model.int8.tflite in --out."""
    from model.pipeline import qat_run

    result = qat_run(load_data(data, data_path, kw["seed"]), model_path, train_config(**kw), out,
                     command=_command_line(), samples=samples, preserve_sparsity=not no_preserve_sparsity)
    click.echo(json.dumps(result, indent=2))


@model.command()
@data_options
@click.option("--model", "model_path", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--samples", type=POSITIVE, default=300, show_default=True,
              help="Calibration images (from the training split).")
@click.option("--threads", type=POSITIVE, default=2, show_default=True)
def quantize(data: str, data_path: Path | None, model_path: Path, samples: int, threads: int) -> None:
    """Write model.float.tflite and model.int8.tflite (full-integer, uint8 input) beside --model, and evaluate."""
    from model.pipeline import quantize_run

    result = quantize_run(load_data(data, data_path), model_path, samples, threads)
    click.echo(json.dumps(result, indent=2))


@model.command()
@data_options
@click.option("--model", "model_path", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle directory (replaced).")
@click.option("--name", default="fashion-mnist", show_default=True)
@click.option("--version", "human_version", default="1.0.0", show_default=True)
@click.option("--samples", type=POSITIVE, default=300, show_default=True, help="Calibration images.")
@click.option("--int8", "int8_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="Ship this INT8 .tflite (e.g. from `vigil model qat`) instead of converting --model.")
@click.option("--threads", type=POSITIVE, default=2, show_default=True)
def bundle(data: str, data_path: Path | None, model_path: Path, out: Path, name: str, human_version: str,
           samples: int, int8_path: Path | None, threads: int) -> None:
    """Quantize a float model to INT8, evaluate it on the test split and write a versioned bundle."""
    from model.pipeline import bundle_run

    spec = bundle_run(load_data(data, data_path), model_path, out, name=name, version=human_version,
                      samples=samples, threads=threads, command=_command_line(), int8_path=int8_path)
    click.echo(json.dumps({"bundle": str(out), "version": spec.version, **spec.metrics}, indent=2))


@model.command()
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), default=None,
              help="Bundle directory (default: the configured bundle, bundles/fashion-mnist).")
@click.option("--data", default="fashion-mnist", show_default=True, metavar="fashion-mnist|FOLDER",
              help="fashion-mnist (its test set), or a folder with one subfolder of images per class, each named "
                   "as a class in the bundle's labels.txt (not every class needs a folder).")
@click.option("--files", "files", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Evaluate the images a list file names, one a line: PATH, or PATH<TAB>LABEL (without a label, "
                   "the image's folder name is its class; relative paths start at the list's folder).")
@click.option("--indices", default=None, metavar="0,5,9-20",
              help="Only the images at these positions (ranges inclusive) of the test set, the folder (class by "
                   "class, files in name order) or the list.")
@click.option("--indices-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="--indices read from a file (commas, spaces or new lines between; # comments).")
@click.option("--data-path", type=click.Path(path_type=Path), default=None, help="Fashion-MNIST idx directory.")
@click.option("--threads", type=POSITIVE, default=2, show_default=True, help="LiteRT interpreter threads.")
@click.option("--limit", type=POSITIVE, default=None, help="Evaluate the first N images only (of those selected).")
@click.option("--confusion", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a confusion-matrix PNG of the classes that occur (needs matplotlib, the [train] extra).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def evaluate(settings: Any, bundle_dir: Path | None, data: str, files: Path | None, indices: str | None,
             indices_file: Path | None, data_path: Path | None, threads: int, limit: int | None,
             confusion: Path | None, as_json: bool) -> None:
    """Score a bundle's INT8 model with LiteRT (no TensorFlow): accuracy, macro precision/recall/F1, a table per
    class, latency and throughput.

    On the Fashion-MNIST test set (the default), an image folder or a list of images, all of them or some by
    index. Folder and list images are prepared as the producer prepares a frame (the bundle's input spec), so
    the scores compare with an end-to-end run over the same images.

    \b
    Examples:
      vigil model evaluate
      vigil model evaluate --bundle bundles/fashion-mnist --limit 1000 --json
      vigil model evaluate --indices 0-499 --confusion reports/confusion.png
      vigil model evaluate --bundle bundles/gate --data labelled/ --json
      vigil model evaluate --bundle bundles/gate --files checked.txt
    """
    from model.bundle_eval import evaluate_bundle, parse_indices, render_metrics

    folder = None if data == "fashion-mnist" else Path(data)
    if files is not None and folder is not None:
        raise click.UsageError("--files and --data FOLDER are two sets of images: pass one of them.")
    if data_path is not None and (files is not None or folder is not None):
        raise click.UsageError("--data-path is where the Fashion-MNIST files are: leave it out with --data FOLDER "
                               "or --files.")
    if indices is not None and indices_file is not None:
        raise click.UsageError("--indices and --indices-file both select images: pass one of them.")
    chosen = None
    if indices is not None:
        chosen = parse_indices(indices, "--indices")
    elif indices_file is not None:
        chosen = parse_indices(indices_file.read_text(), f"--indices-file {indices_file}")
    if confusion is not None:
        _check_plot_path(confusion, "--confusion")
    path = bundle_dir or (settings.bundle if settings is not None else None)
    metrics = evaluate_bundle(path, data_path, threads=threads, limit=limit, confusion_png=confusion, data=folder,
                              files=files, indices=chosen)
    click.echo(json.dumps(metrics, indent=2) if as_json else render_metrics(metrics))


@model.command(epilog="""\b
Examples:
  vigil model collect gate.mp4 --out labelled/ --every 25            # one frame a second of a 25 fps video
  vigil model collect gate.mp4 --out labelled/ --fps 2 --roi 100,50,640,480
  vigil model collect rtsp://user:pass@10.0.0.5/stream1 --out labelled/ --fps 1 --count 500 --append
  vigil model collect /dev/video0 --out desk/ --fps 2 --name desk   # until Ctrl-C
""")
@click.argument("source")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the images (made if missing; it must be empty, unless --append).")
@click.option("--every", type=POSITIVE, default=None, help="Keep every Nth frame [default: 1]. Not with --fps.")
@click.option("--fps", type=click.FloatRange(0, min_open=True), default=None,
              help="Keep this many frames per second: of media time for a file, of capture time for a camera. "
                   "Not with --every.")
@click.option("--count", type=POSITIVE, default=None,
              help="Stop after N images (without it: the end of the file; a camera runs until Ctrl-C).")
@click.option("--roi", default=None, metavar="X,Y,W,H",
              help="Save only this region of each frame (pixels); it must lie inside the frame.")
@click.option("--format", "fmt", type=click.Choice(["png", "jpg"]), default="png", show_default=True,
              help="png keeps the decoded frame's pixels exactly (what the producer sends); jpg is smaller.")
@click.option("--name", default=None,
              help="File names are NAME-000000.png, ... (default: the file or folder name, videoN for a USB "
                   "device, the camera's host).")
@click.option("--append", is_flag=True,
              help="Write into a folder that is not empty; numbering continues after NAME's highest there "
                   "(class subfolders included).")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when it is a TTY).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def collect(settings: Any, source: str, out: Path, every: int | None, fps: float | None, count: int | None,
            roi: str | None, fmt: str, name: str | None, append: bool, progress: bool | None, as_json: bool) -> None:
    """Save frames of your own footage as training images: a video file, an image folder, or a camera (rtsp://,
    http(s):// MJPEG, /dev/videoN or a device number).

    Frames are written at full resolution (or cut to --roi), not prepared for a model: training prepares
    them. Then sort them into OUT/<class>/ subfolders, one per label, and train with
    `vigil model train --data OUT`. A camera is not reconnected: when it stops, the run ends with what it
    wrote, and --append goes on later.
    """
    import threading
    from dataclasses import asdict

    from common.signals import stop_on_signals
    from model.collect import CollectJob, render
    from model.collect import collect as collect_frames
    from producers.cameras.camera import LiveTiming
    from producers.files.sources import Sampling
    from producers.roi import parse_roi

    if every is not None and fps is not None:
        raise click.UsageError("--every and --fps are mutually exclusive: --every N keeps every Nth frame, --fps R "
                               "keeps R frames per second; pass one of them.")
    try:
        region = parse_roi(roi) if roi is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--roi'") from None
    job = CollectJob(source, out, Sampling(every or 1, fps), count, region, "png" if fmt == "png" else "jpg", name,
                     append)
    timing = LiveTiming(stall_timeout_s=settings.stall_timeout_s) if settings is not None else LiveTiming()
    stop = threading.Event()
    with stop_on_signals(stop, "stopping after the image being written"):
        report = collect_frames(job, timing, sys.stderr.isatty() if progress is None else progress, stop)
    if as_json:
        click.echo(json.dumps(asdict(report)))
    else:
        click.echo(f"{render(report)}\nnext: {report.next}")


def _check_plot_path(path: Path, option: str) -> None:
    """Before a long evaluation, not after it: the directory exists and is writable, matplotlib can write the
    format. Like curl -o, no directories are made behind the user's back."""
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: directory {path.parent} does not exist. Create it first "
                          f"(mkdir -p {path.parent}) or pick another path.")
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"{option} {path}: directory {path.parent} is not writable. Pick another path.")
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError(f"{option} needs matplotlib: pip install 'vigil[train]', or leave {option} out.")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix and path.suffix[1:].lower() not in formats:
        raise ConfigError(f"{option} {path}: matplotlib cannot write {path.suffix!r} files. Use .png (or one of "
                          f"{', '.join('.' + f for f in sorted(formats))}).")


@model.command()
@click.option("--runs", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), default=Path("bundles/fashion-mnist"),
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports/fashion-mnist.md"), show_default=True)
@click.option("--data-path", type=click.Path(path_type=Path), default=None)
@click.option("--threads", type=POSITIVE, default=2, show_default=True)
def report(runs: Path, bundle_dir: Path, out: Path, data_path: Path | None, threads: int) -> None:
    """Re-measure every run's LiteRT models on the test set and regenerate the markdown report."""
    from model.report import write_report

    click.echo(str(write_report(runs, bundle_dir, out, data_path, threads, command=_command_line())))
