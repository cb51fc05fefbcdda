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

DATA_HELP = ("'fashion-mnist' or a folder with one subfolder of images per class (hidden ones skipped); a folder's "
             "images are read as gray and stretched to 28x28, the input of the shipped architectures.")
POSITIVE = click.IntRange(min=1)


def _command_line() -> str:
    return shlex.join(["vigil", *sys.argv[1:]])


def _load_data(data: str, data_path: Path | None, seed: int = 0) -> Any:
    from model.data import load_dataset

    return load_dataset(data, data_path, seed=seed)


def data_options(fn: Any) -> Any:
    fn = click.option("--data", default="fashion-mnist", show_default=True, help=DATA_HELP)(fn)
    return click.option("--data-path", type=click.Path(path_type=Path), default=None,
                        help="Directory of the Fashion-MNIST idx files (default: Debian path, ~/.keras/datasets).")(fn)


def train_options(fn: Any) -> Any:
    for opt in reversed([
        click.option("--epochs", type=POSITIVE, default=15, show_default=True),
        click.option("--batch-size", type=POSITIVE, default=128, show_default=True),
        click.option("--lr", type=click.FloatRange(0, min_open=True), default=2e-3, show_default=True,
                     help="Peak learning rate (cosine decay)."),
        click.option("--patience", type=click.IntRange(0), default=4, show_default=True,
                     help="Early-stopping patience (epochs)."),
        click.option("--no-augment", is_flag=True, help="Disable random shift + horizontal flip."),
        click.option("--limit", type=POSITIVE, default=None, help="Train on the first N images only (smoke runs)."),
        click.option("--threads", type=POSITIVE, default=2, show_default=True),
        click.option("--seed", default=0, show_default=True),
    ]):
        fn = opt(fn)
    return fn


def _train_config(**kw: Any) -> Any:
    from model.train import TrainConfig

    return TrainConfig(epochs=kw["epochs"], batch_size=kw["batch_size"], lr=kw["lr"], patience=kw["patience"],
                       augment=not kw["no_augment"], limit=kw["limit"], threads=kw["threads"], seed=kw["seed"])


@click.group()
def model() -> None:
    """Train, compress, quantize, evaluate and bundle classification models (needs the [train] extra,
    except `evaluate`, which runs on LiteRT alone)."""


@model.command()
@data_options
@train_options
@click.option("--arch", default="vgg-bn", show_default=True,
              help="baseline-cnn, vgg-bn, mobilenet-v2-style, keras-mobilenet-v2, keras-mobilenet-v3-small, ...")
@click.option("--width", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Width multiplier.")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Local weights file for keras-* architectures.")
@click.option("--size", type=click.IntRange(32, 512), default=None,
              help="keras-* architectures: the resolution the backbone runs at (input is resized inside; 96).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
def train(data: str, data_path: Path | None, arch: str, width: float, weights: Path | None, size: int | None,
          out: Path, **kw: Any) -> None:
    """Train a float model; writes model.keras.h5, config.json, history, curves.png, metrics.json."""
    from model.pipeline import train_run

    result = train_run(_load_data(data, data_path, kw["seed"]), arch, _train_config(**kw), out,
                       command=_command_line(), width=width, weights=weights, size=size)
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

    result = prune_run(_load_data(data, data_path, kw["seed"]), model_path, sparsity, _train_config(**kw), out,
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

    dataset = _load_data(data, data_path)
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

    result = structured_run(_load_data(data, data_path, kw["seed"]), model_path, keep, criterion,
                            _train_config(**kw), out, command=_command_line())
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

    result = qat_run(_load_data(data, data_path, kw["seed"]), model_path, _train_config(**kw), out,
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

    result = quantize_run(_load_data(data, data_path), model_path, samples, threads)
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

    spec = bundle_run(_load_data(data, data_path), model_path, out, name=name, version=human_version,
                      samples=samples, threads=threads, command=_command_line(), int8_path=int8_path)
    click.echo(json.dumps({"bundle": str(out), "version": spec.version, **spec.metrics}, indent=2))


@model.command()
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), default=None,
              help="Bundle directory (default: the configured bundle, bundles/fashion-mnist).")
@click.option("--data-path", type=click.Path(path_type=Path), default=None, help="Fashion-MNIST idx directory.")
@click.option("--threads", type=POSITIVE, default=2, show_default=True, help="LiteRT interpreter threads.")
@click.option("--limit", type=POSITIVE, default=None, help="Evaluate on the first N test images only.")
@click.option("--confusion", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a confusion-matrix PNG (needs matplotlib, the [train] extra).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def evaluate(settings: Any, bundle_dir: Path | None, data_path: Path | None, threads: int, limit: int | None,
             confusion: Path | None, as_json: bool) -> None:
    """Evaluate a bundle's INT8 model on the Fashion-MNIST test set with LiteRT (no TensorFlow).

    \b
    Examples:
      vigil model evaluate
      vigil model evaluate --bundle bundles/fashion-mnist --limit 1000 --json
      vigil model evaluate --confusion reports/confusion.png
    """
    from model.bundle_eval import evaluate_bundle, render_metrics

    if confusion is not None:
        _check_plot_path(confusion, "--confusion")
    path = bundle_dir or (settings.bundle if settings is not None else None)
    metrics = evaluate_bundle(path, data_path, threads=threads, limit=limit, confusion_png=confusion)
    click.echo(json.dumps(metrics, indent=2) if as_json else render_metrics(metrics))


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
