"""The options every `vigil model` command shares, and how they resolve the data: Fashion-MNIST, or an image
folder prepared for one input spec (``--size``/``--color``/``--resize``, or the spec and splits a --model's run
recorded), with ``--test-data``; and the training options and their TrainConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from common.errors import ConfigError

DATA_HELP = ("'fashion-mnist' (28x28 gray, its own test set) or a folder with one subfolder of images per class "
             "(hidden ones skipped); a folder's images are prepared as producers prepare a frame, to --size, "
             "--color and --resize.")
POSITIVE = click.IntRange(min=1)
INPUT_OPTIONS = ("size", "color", "resize", "test_data")  # kept in ctx.meta, read by load_data


def load_data(data: str, data_path: Path | None, seed: int = 0) -> Any:
    """The dataset, prepared for the spec ``_input_spec`` resolves from the command's options."""
    from model.data import load_dataset

    ctx = click.get_current_context()
    test_data = ctx.meta.get("vigil.model.test_data")
    model_path = ctx.params.get("model_path")
    if model_path is not None:  # the splits of the model's run, unless the user names others
        from model.pipeline import run_data_source

        recorded = run_data_source(model_path)
        if test_data is None and recorded.get("test_data") and recorded.get("data") == data:
            test_data = Path(recorded["test_data"])
        if ctx.get_parameter_source("seed") in (None, click.core.ParameterSource.DEFAULT) and "seed" in recorded:
            seed = int(recorded["seed"])
    return load_dataset(data, data_path, _input_spec(data), test_data=test_data, seed=seed)


def _input_spec(data: str) -> Any:
    """One rule for every command: fashion-mnist has its own spec (--size/--color/--resize/--test-data refused);
    a folder is prepared for the spec of the --model's run (its config.json) when the command takes a model and
    the run recorded one, else for --size/--color/--resize (defaults 96, rgb, center_crop). Options that
    contradict the run's spec are refused: the model takes the input it was trained on."""
    from model.data import FASHION_SPEC, FOLDER_SPEC, folder_spec
    from model.pipeline import run_input_spec

    ctx = click.get_current_context()
    given = {name: ctx.meta.get(f"vigil.model.{name}") for name in INPUT_OPTIONS}
    flags = [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]
    model_path = ctx.params.get("model_path")
    recorded = run_input_spec(model_path) if model_path is not None else None
    if data == "fashion-mnist":
        if flags:
            raise ConfigError(f"{', '.join(flags)}: --data fashion-mnist is 28x28 gray with its own test set; these "
                              "options are for image folders. Drop them, or pass --data FOLDER.")
        if recorded not in (None, FASHION_SPEC):
            raise ConfigError(f"--model {model_path} was trained on {_describe(recorded)} images, not Fashion-MNIST "
                              "(28x28 gray). Pass the --data it was trained on.")
        return FASHION_SPEC
    spec = folder_spec(given["size"], given["color"], given["resize"], base=recorded or FOLDER_SPEC)
    if recorded is not None and spec != recorded:
        raise ConfigError(f"{', '.join(f for f in flags if f != '--test-data')}: --model {model_path} was trained on "
                          f"{_describe(recorded)} images (its run's config.json). Drop the option(s): the data is "
                          "prepared as the model was trained.")
    return spec


def _describe(spec: Any) -> str:
    return f"{spec.height}x{spec.width} {spec.color} {spec.resize}"


class SizeType(click.ParamType):
    """``96`` (square) or ``120x160`` (height x width); ``SizeOption`` turns ``120 160`` into the latter."""

    name = "size"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        parts = str(value).lower().split("x")
        if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
            self.fail(f"{value!r} is not a size: pass H (square), 'H W' or HxW, e.g. --size 96 or --size 120 160.",
                      param, ctx)
        h, w = int(parts[0]), int(parts[-1])
        if not (8 <= h <= 2048 and 8 <= w <= 2048):
            self.fail(f"{value!r}: height and width must be 8..2048 pixels.", param, ctx)
        return h, w


class SizeOption(click.Option):
    """``--size H`` or ``--size H W``: click options take a fixed number of values, so the parser's handler of
    this option is wrapped to take a second integer when one follows. Where a click release lays its parser out
    otherwise, ``--size HxW`` still works."""

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            option = getattr(parser, "_long_opt", {}).get(name)
            if option is not None and hasattr(option, "process"):
                option.process = _taking_width(option.process)


def _taking_width(process: Any) -> Any:
    def take(value: Any, state: Any) -> None:
        rargs = getattr(state, "rargs", None)
        if isinstance(value, str) and value.isdigit() and rargs and rargs[0].isdigit():
            value = f"{value}x{rargs.pop(0)}"
        process(value, state)

    return take


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta[f"vigil.model.{param.name}"] = value
    return value


def data_options(fn: Any) -> Any:
    """--data, --data-path and the input options of an image folder. The latter are not passed to the command
    (each would have to thread them through): ``load_data`` reads them from the click context."""
    takes_model = any(p.name == "model_path" for p in getattr(fn, "__click_params__", []))
    run = "; with --model: its run's, from config.json" if takes_model else ""
    for opt in reversed([
        click.option("--data", default="fashion-mnist", show_default=True, help=DATA_HELP),
        click.option("--data-path", type=click.Path(path_type=Path), default=None,
                     help="Directory of the Fashion-MNIST idx files (default: Debian path, ~/.keras/datasets)."),
        click.option("--size", cls=SizeOption, type=SizeType(), default=None, expose_value=False,
                     callback=_remember, metavar="H [W]",
                     help=f"Image folders: the model input, H (square) or H W, also HxW  [default: 96{run}]."),
        click.option("--color", type=click.Choice(["rgb", "gray"]), default=None, expose_value=False,
                     callback=_remember, help=f"Image folders: colour of the model input  [default: rgb{run}]."),
        click.option("--resize", type=click.Choice(["center_crop", "letterbox", "stretch"]), default=None,
                     expose_value=False, callback=_remember,
                     help="Image folders: how an image (and every served frame) of another aspect reaches --size: "
                          "center_crop cuts it to the aspect, letterbox fits it whole with black bars, stretch "
                          f"distorts it (docs/model.md)  [default: center_crop{run}]."),
        click.option("--test-data", type=click.Path(file_okay=False, path_type=Path), default=None,
                     expose_value=False, callback=_remember,
                     help="Image folders: a separate test folder with the same class subfolders (CIFAR-style "
                          "train/ and test/); validation is then split from --data."),
    ]):
        fn = opt(fn)
    return fn


def train_options(fn: Any) -> Any:
    for opt in reversed([
        click.option("--epochs", type=POSITIVE, default=15, show_default=True),
        click.option("--batch-size", type=POSITIVE, default=128, show_default=True),
        click.option("--lr", type=click.FloatRange(0, min_open=True), default=2e-3, show_default=True,
                     help="Peak learning rate (cosine decay)."),
        click.option("--patience", type=click.IntRange(0), default=4, show_default=True,
                     help="Early-stopping patience (epochs)."),
        click.option("--no-augment", is_flag=True,
                     help="No augmentation (image folders: the camera augmentation of docs/model.md; "
                          "Fashion-MNIST: random shift + horizontal flip)."),
        click.option("--limit", type=POSITIVE, default=None, help="Train on the first N images only (smoke runs)."),
        click.option("--threads", type=POSITIVE, default=2, show_default=True),
        click.option("--seed", default=0, show_default=True),
    ]):
        fn = opt(fn)
    return fn


def train_config(**kw: Any) -> Any:
    """Image folders train with the camera augmentation, Fashion-MNIST with shift + flip (what
    reports/fashion-mnist-runs were trained with, so that they reproduce)."""
    from model.train import CameraAugment, TrainConfig

    folder = click.get_current_context().params.get("data", "fashion-mnist") != "fashion-mnist"
    return TrainConfig(epochs=kw["epochs"], batch_size=kw["batch_size"], lr=kw["lr"], patience=kw["patience"],
                       augment=not kw["no_augment"], limit=kw["limit"], threads=kw["threads"], seed=kw["seed"],
                       camera=CameraAugment() if folder else None)
