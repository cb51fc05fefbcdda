import json
from pathlib import Path

import numpy as np
import pytest

from common.bundle import InputSpec
from common.errors import DataError
from model.data import (
    FASHION_LABELS,
    FASHION_SPEC,
    find_fashion_dir,
    load_fashion_mnist,
    load_image_folder,
    split_train_val,
)

GRAY_28 = InputSpec(height=28, width=28, channels=1, color="gray", resize="stretch")
needs_fashion = pytest.mark.skipif(
    not any(d.is_dir() for d in (Path("/usr/share/datasets/fashion-mnist"),)), reason="Fashion-MNIST not installed")


@needs_fashion
def test_fashion_mnist_splits_are_deterministic_and_disjoint() -> None:
    a, b = load_fashion_mnist(seed=0), load_fashion_mnist(seed=0)
    assert a.train.x.shape == (55_000, 28, 28, 1) and a.val.x.shape == (5_000, 28, 28, 1)
    assert a.test.x.shape == (10_000, 28, 28, 1) and a.train.x.dtype == np.uint8
    assert np.array_equal(a.val.y, b.val.y) and np.array_equal(a.val.x, b.val.x)
    assert a.labels == FASHION_LABELS and set(np.unique(a.test.y)) == set(range(10))
    assert a.spec == FASHION_SPEC


def test_missing_dataset_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        find_fashion_dir(tmp_path)


def test_split_is_seeded() -> None:
    from model.data import Split

    s = Split(np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1), np.arange(100))
    (t1, v1), (_t2, v2) = split_train_val(s, 0.2, 3), split_train_val(s, 0.2, 3)
    assert np.array_equal(v1.y, v2.y) and len(v1.y) == 20 and not set(t1.y) & set(v1.y)


def test_image_folder_one_subfolder_per_class(tmp_path: Path) -> None:
    import cv2

    for cls, value in (("dark", 10), ("light", 240)):
        (tmp_path / cls).mkdir()
        for i in range(10):
            cv2.imwrite(str(tmp_path / cls / f"{i}.png"), np.full((40, 30), value, np.uint8))
    data = load_image_folder(tmp_path, GRAY_28)
    assert data.labels == ["dark", "light"]
    assert data.input_shape == (28, 28, 1)
    assert len(data.train.y) + len(data.val.y) + len(data.test.y) == 20


def test_image_folder_without_classes_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="one subfolder per class"):
        load_image_folder(tmp_path, GRAY_28)


def test_hidden_folders_are_not_classes_and_empty_classes_are_refused(tmp_path: Path) -> None:
    """A hidden folder (.ipynb_checkpoints) is not a class; an empty class folder, or a missing directory, is
    refused."""
    import cv2

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / cls / f"{i}.png"), np.full((28, 28), 50 * i, np.uint8))
    (tmp_path / ".ipynb_checkpoints").mkdir()
    cv2.imwrite(str(tmp_path / ".ipynb_checkpoints" / "0.png"), np.zeros((28, 28), np.uint8))
    assert load_image_folder(tmp_path, GRAY_28).labels == ["a", "b"]
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) c hold no images"):
        load_image_folder(tmp_path, GRAY_28)
    with pytest.raises(DataError, match="no such directory"):
        load_image_folder(tmp_path / "nope", GRAY_28)


RGB_24x32 = InputSpec(height=24, width=32, channels=3, color="rgb", resize="center_crop")


def test_training_images_are_the_frames_a_producer_sends(tmp_path: Path) -> None:
    """For every file, the array training learns from is ``preprocess(read_image(file), spec)`` and is the frame
    the file producer sends for it: train and serve prepare an image the same way."""
    from common.images import read_image
    from common.preprocess import preprocess
    from model.data import image_files, load_class_images
    from producers.files.sources import Sampling, iter_preprocessed
    from tests.model.folders import SHAPES, shapes_folder

    root = shapes_folder(tmp_path / "shapes", per_class=4)
    split = load_class_images(root, list(SHAPES), RGB_24x32)
    files = [f for shape in SHAPES for f in image_files(root / shape)]
    produced = [img for shape in SHAPES for _, img in iter_preprocessed(root / shape, Sampling(), RGB_24x32)]
    assert split.x.shape == (12, 24, 32, 3) and list(split.y) == [0] * 4 + [1] * 4 + [2] * 4
    for x, f, frame in zip(split.x, files, produced, strict=True):
        assert np.array_equal(x, preprocess(read_image(f), RGB_24x32)) and np.array_equal(x, frame), f
    data = load_image_folder(root, RGB_24x32)
    loaded = np.concatenate([data.train.x, data.val.x, data.test.x])
    assert sorted(a.tobytes() for a in loaded) == sorted(a.tobytes() for a in split.x) and data.spec == RGB_24x32


def test_a_separate_test_folder_is_the_test_split(tmp_path: Path) -> None:
    """With train/ and test/ folders, test is all of test/ and val comes from train/; the two must hold the same
    classes."""
    from model.data import load_dataset
    from tests.model.folders import shapes_folder

    train = shapes_folder(tmp_path / "cifar" / "train", per_class=10)
    test = shapes_folder(tmp_path / "cifar" / "test", per_class=3, seed=1)
    data = load_dataset(str(train), spec=RGB_24x32, test_data=test)
    assert (len(data.train.y), len(data.val.y), len(data.test.y)) == (27, 3, 9)
    assert data.name == "cifar" and data.labels == ["circle", "square", "triangle"]
    (test / "square").rename(test / "box")
    with pytest.raises(DataError, match=r"--test-data .* has class folders box, circle, triangle.*same class"):
        load_dataset(str(train), spec=RGB_24x32, test_data=test)


def test_fashion_mnist_takes_no_other_spec() -> None:
    from model.data import load_dataset

    with pytest.raises(DataError, match="fashion-mnist is 28x28 gray"):
        load_dataset("fashion-mnist", spec=RGB_24x32)


def test_a_dataset_whose_images_do_not_fit_its_spec_is_refused() -> None:
    from model.data import Dataset, Split

    s = Split(np.zeros((2, 28, 28, 1), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(DataError, match=r"train images are \(28, 28, 1\), but its input spec says \(24, 32, 3\)"):
        Dataset("x", ["a", "b"], s, s, s, RGB_24x32)


def test_a_folder_dataset_records_how_its_splits_were_made(tmp_path: Path) -> None:
    """A run records data, test folder and seed (config.json ``data_source``), so that bundle, prune and the other
    commands that take its model re-make the same splits instead of scoring on its training images."""
    from model.pipeline import run_data_source
    from tests.model.folders import shapes_folder

    train, test = shapes_folder(tmp_path / "train", per_class=4), shapes_folder(tmp_path / "test", per_class=2)
    spec = InputSpec(height=16, width=16, channels=3, color="rgb", resize="center_crop")
    data = load_image_folder(train, spec, seed=3, test_root=test)
    assert data.source == {"data": str(train), "test_data": str(test), "seed": 3}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"data_source": data.source}))
    assert run_data_source(tmp_path / "run" / "model.keras.h5") == data.source
