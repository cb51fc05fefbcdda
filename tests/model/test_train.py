from pathlib import Path

import numpy as np
import pytest

from common.errors import DataError
from model.data import Split, load_fashion_mnist
from model.train import TrainConfig


@pytest.fixture(scope="module")
def small_data():
    try:
        return load_fashion_mnist()
    except DataError as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
def test_one_epoch_on_a_few_hundred_images_beats_chance(small_data, tmp_path: Path, capsys) -> None:
    from model.architectures import build
    from model.train import fit, keras_accuracy

    model = build("baseline-cnn", small_data.input_shape, 10)
    cfg = TrainConfig(epochs=1, batch_size=32, limit=640, augment=False, warmup_epochs=0, threads=1)
    hist = fit(model, small_data, cfg, tmp_path)
    assert len(hist["loss"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "val_accuracy" in err  # the epoch lines are progress: stdout is the command's JSON
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "history.json").is_file()
    assert keras_accuracy(model, small_data.test.head(500)) > 0.3  # chance is 0.1


@pytest.mark.parametrize("arch", ["baseline-cnn", "vgg-bn", "mobilenet-v2-style"])
def test_architectures_take_raw_pixels_and_end_at_logits(arch: str) -> None:
    from model.architectures import build

    model = build(arch, (28, 28, 1), 10, width=0.5)
    out = model(np.full((2, 28, 28, 1), 255, np.float32))
    assert out.shape == (2, 10)
    assert model.layers[-1].get_config().get("activation") == "linear"


def test_unknown_architecture_is_a_config_error() -> None:
    from common.errors import ConfigError
    from model.architectures import build

    with pytest.raises(ConfigError, match="unknown architecture"):
        build("resnet-9000", (28, 28, 1), 10)


def test_keras_application_from_scratch_runs_at_size_with_fast_bn_statistics() -> None:
    import tf_keras as keras

    from model.architectures import build

    model = build("keras-mobilenet-v2", (28, 28, 1), 10, width=0.35, size=64)
    assert model(np.zeros((1, 28, 28, 1), np.float32)).shape == (1, 10)
    assert model.get_layer("resize").get_config()["height"] == 64
    bns = [layer for layer in model.layers[-2].layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.momentum == 0.9 for layer in bns)


def test_recalibrated_bn_makes_inference_match_training_statistics() -> None:
    from model.architectures import build
    from model.train import recalibrate_bn

    model = build("keras-mobilenet-v2", (28, 28, 1), 10, width=0.35, size=32)
    x = np.random.default_rng(0).integers(0, 256, (128, 28, 28, 1)).astype(np.float32)
    train_mode = model(x, training=True).numpy()  # batch statistics
    stale = np.abs(model(x).numpy() - train_mode).mean()  # moving statistics still near their init
    layers, used = recalibrate_bn(model, x.astype(np.uint8), batch_size=128)
    assert layers > 10 and used == 128
    fresh = np.abs(model(x).numpy() - train_mode).mean()  # left: Bessel's correction of the moving variance
    assert fresh < 0.2 * stale, (fresh, stale)


def test_recalibration_with_fewer_images_than_a_batch_still_runs() -> None:
    """With fewer than 128 images (the batch size) the images make one batch: every image is used and the
    statistics change."""
    from model.architectures import build
    from model.train import recalibrate_bn

    model = build("keras-mobilenet-v2", (28, 28, 1), 10, width=0.35, size=32)
    x = np.random.default_rng(0).integers(0, 256, (72, 28, 28, 1)).astype(np.uint8)
    before = [w.copy() for w in model.get_weights()]
    assert recalibrate_bn(model, x)[1] == 72
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


@pytest.mark.slow
def test_backbone_weights_that_match_no_layer_are_refused(tmp_path: Path) -> None:
    """--weights of another model, whose layers match none of the backbone's (skip_mismatch would load nothing and
    the run train from scratch, silently), or a missing file, is refused; the backbone's own weights load."""
    from common.errors import ConfigError
    from model.architectures import build

    other = build("baseline-cnn", (28, 28, 1), 10)
    other.save_weights(str(tmp_path / "other.h5"))
    with pytest.raises(ConfigError, match="none of its layers match"):
        build("keras-mobilenet-v2", (28, 28, 1), 10, width=0.35, size=32, weights=tmp_path / "other.h5")
    with pytest.raises(ConfigError, match="does not exist"):
        build("keras-mobilenet-v2", (28, 28, 1), 10, width=0.35, size=32, weights=tmp_path / "nope.h5")
    source = build("keras-mobilenet-v2", (28, 28, 1), 10, width=0.35, size=32)
    backbone = next(layer for layer in source.layers if hasattr(layer, "layers"))
    backbone.save_weights(str(tmp_path / "backbone.h5"))
    build("keras-mobilenet-v2", (28, 28, 1), 10, width=0.35, size=32, weights=tmp_path / "backbone.h5")


ALL_ON = {"crop_p": 1.0, "flip_p": 1.0, "jitter_p": 1.0, "blur_p": 1.0, "noise_p": 1.0, "jpeg_p": 1.0}
ALL_OFF = dict.fromkeys(ALL_ON, 0.0)


@pytest.mark.parametrize("channels", [1, 3])
def test_camera_augmentation_changes_images_but_not_their_shape_or_dtype(channels: int) -> None:
    """Every step on: each image changes, the batch keeps its shape and uint8; the same seed draws the same."""
    from model.train import CameraAugment, camera_augment

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (6, 24, 32, channels), dtype=np.uint8)
    out = camera_augment(batch, CameraAugment(**ALL_ON), np.random.default_rng(1))
    assert out.shape == batch.shape and out.dtype == np.uint8
    assert all(not np.array_equal(a, b) for a, b in zip(out, batch, strict=True))
    assert np.array_equal(out, camera_augment(batch, CameraAugment(**ALL_ON), np.random.default_rng(1)))
    assert np.array_equal(camera_augment(batch, CameraAugment(**ALL_OFF), rng), batch)


def test_a_flip_alone_mirrors_the_pixels_exactly() -> None:
    from model.train import CameraAugment, camera_augment

    img = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    flipped = camera_augment(img[None], CameraAugment(**{**ALL_OFF, "flip_p": 1.0}), np.random.default_rng(0))
    assert np.array_equal(flipped[0], img[:, ::-1])


def test_a_resized_crop_is_a_box_of_the_drawn_area_and_aspect() -> None:
    """On ramps (channel 0 = 7 * x, channel 1 = 9 * y) each output pixel tells where it was sampled: every crop
    is a box of 0.6..1 of the image, its aspect within 3/4..4/3 of the image's, stretched back to the full size."""
    from model.train import CameraAugment, camera_augment

    h, w = 24, 32
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.stack([7 * xs, 9 * ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    crops = camera_augment(np.repeat(img[None], 32, axis=0), CameraAugment(**{**ALL_OFF, "crop_p": 1.0}),
                           np.random.default_rng(0))
    for crop in crops.astype(float):
        row, col = crop[h // 2, :, 0] / 7, crop[:, w // 2, 1] / 9  # sampled x along a row, y down a column
        bw, bh = (row[-2] - row[1]) * w / (w - 3), (col[-2] - col[1]) * h / (h - 3)  # inner pixels: no border
        assert 0.6 - 0.05 <= bw * bh / (w * h) <= 1.0 + 1e-9, (bw, bh)
        assert 3 / 4 - 0.05 <= (bw / w) / (bh / h) <= 4 / 3 + 0.05, (bw, bh)
        assert np.all(np.diff(row) >= 0) and np.all(np.diff(col) >= 0)  # no flip: crop_p alone


def test_make_dataset_augments_training_batches_only(tmp_path: Path) -> None:
    """Training batches are augmented float32 of the same shape; with augment off (or validation) they are the
    images as they are."""
    from model.train import CameraAugment, make_dataset

    x = np.random.default_rng(0).integers(0, 256, (32, 24, 32, 3), dtype=np.uint8)
    split = Split(x, np.arange(32))
    cfg = TrainConfig(batch_size=32, threads=1, camera=CameraAugment())
    batch, labels = next(iter(make_dataset(split, cfg, training=True)))
    assert batch.dtype.name == "float32" and batch.shape == (32, 24, 32, 3)
    assert not np.array_equal(batch.numpy(), x[np.argsort(np.argsort(labels.numpy()))])
    for plain in (make_dataset(split, TrainConfig(batch_size=32, augment=False, camera=CameraAugment()), True),
                  make_dataset(split, cfg, training=False)):
        batch, labels = next(iter(plain))
        assert np.array_equal(batch.numpy(), x[labels.numpy()].astype(np.float32))
