import json
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from common.cli import main
from model.options import data_options
from tests.model.folders import SHAPES, shapes_folder

TINY = ["--arch", "vgg-bn", "--width", "0.25", "--epochs", "1", "--batch-size", "8", "--threads", "1"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return shapes_folder(tmp_path_factory.mktemp("data") / "shapes", per_class=10)


@pytest.mark.slow
def test_an_rgb_folder_trains_bundles_and_serves_at_a_non_square_input(shapes: Path, tmp_path: Path,
                                                                       capsys) -> None:
    """40x60 and 60x40 colour images train at 24x32 rgb; config.json and the bundle's spec record that input
    (centre crop, the folder default) and the camera augmentation; the serving runtime classifies an image
    prepared with the bundle's spec."""
    from common.bundle import Bundle
    from common.images import read_image
    from common.inference import Classifier
    from common.preprocess import preprocess

    run, out = tmp_path / "run", tmp_path / "bundle"
    assert main(["model", "train", "--data", str(shapes), "--size", "24", "32", "--color", "rgb", *TINY,
                 "--out", str(run)]) == 0, capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["input"] | {"height": 24, "width": 32, "channels": 3} == config["input"]
    assert config["input"]["color"] == "rgb" and config["input"]["resize"] == "center_crop"
    assert config["train"]["augment"] and config["train"]["camera"]["crop_area"] == [0.6, 1.0]
    assert main(["model", "bundle", "--data", str(shapes), "--model", str(run / "model.keras.h5"), "--out",
                 str(out), "--name", "shapes", "--samples", "8"]) == 0, capsys.readouterr().err
    bundle = Bundle.load(out)
    spec = bundle.spec.input
    assert (spec.height, spec.width, spec.channels, spec.color, spec.resize) == (24, 32, 3, "rgb", "center_crop")
    frame = preprocess(read_image(shapes / "circle" / "00.png"), spec)
    probs = Classifier.from_bundle(bundle).predict_proba(frame[None])
    assert probs.shape == (1, 3) and bundle.labels[int(np.argmax(probs))] in SHAPES


@pytest.mark.slow
def test_no_augment_is_recorded_and_bundle_options_must_match_the_run(shapes: Path, tmp_path: Path,
                                                                      capsys) -> None:
    """--no-augment trains without augmentation and config.json says so; `vigil model bundle` prepares the data
    with the run's recorded spec, and refuses (exit 2) a --size that contradicts it."""
    run = tmp_path / "run"
    assert main(["model", "train", "--data", str(shapes), "--size", "24", "--no-augment", *TINY,
                 "--out", str(run)]) == 0, capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["augment"] is False and (config["input"]["height"], config["input"]["width"]) == (24, 24)
    capsys.readouterr()
    code = main(["model", "bundle", "--data", str(shapes), "--model", str(run / "model.keras.h5"), "--size", "32",
                 "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "--size" in err and "was trained on 24x24 rgb center_crop" in err, err


@pytest.mark.parametrize("option", [["--size", "96"], ["--color", "gray"], ["--resize", "letterbox"],
                                    ["--test-data", "."]])
def test_folder_input_options_are_refused_for_fashion_mnist(option: list[str], tmp_path: Path, capsys) -> None:
    """Fashion-MNIST is 28x28 gray with its own test set: an input option is a usage error naming it."""
    assert main(["model", "train", *option, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{option[0]}: --data fashion-mnist is 28x28 gray" in err, err
    assert not (tmp_path / "run").exists()


@click.command()
@data_options
def _sizes(data: str, data_path: Path | None) -> None:
    click.echo(repr(click.get_current_context().meta.get("vigil.model.size")))


@pytest.mark.parametrize(("args", "size"), [(["--size", "96"], (96, 96)), (["--size", "24", "32"], (24, 32)),
                                            (["--size", "24x32"], (24, 32)), (["--size=24", "32"], (24, 32)),
                                            (["--size", "24", "--color", "gray"], (24, 24)), ([], None)])
def test_size_takes_one_or_two_integers(args: list[str], size: tuple[int, int] | None) -> None:
    result = CliRunner().invoke(_sizes, args)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == repr(size)


@pytest.mark.parametrize("bad", [["--size", "0"], ["--size", "24x"], ["--size", "big"], ["--size", "24", "32", "7"]])
def test_a_size_that_is_not_one_is_a_usage_error(bad: list[str]) -> None:
    assert CliRunner().invoke(_sizes, bad).exit_code == 2
