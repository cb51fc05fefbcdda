from pathlib import Path

import numpy as np
import pytest

from common.errors import DataError
from model.data import FASHION_LABELS, find_fashion_dir, load_fashion_mnist, load_image_folder, split_train_val

needs_fashion = pytest.mark.skipif(
    not any(d.is_dir() for d in (Path("/usr/share/datasets/fashion-mnist"),)), reason="Fashion-MNIST not installed")


@needs_fashion
def test_fashion_mnist_splits_are_deterministic_and_disjoint() -> None:
    a, b = load_fashion_mnist(seed=0), load_fashion_mnist(seed=0)
    assert a.train.x.shape == (55_000, 28, 28, 1) and a.val.x.shape == (5_000, 28, 28, 1)
    assert a.test.x.shape == (10_000, 28, 28, 1) and a.train.x.dtype == np.uint8
    assert np.array_equal(a.val.y, b.val.y) and np.array_equal(a.val.x, b.val.x)
    assert a.labels == FASHION_LABELS and set(np.unique(a.test.y)) == set(range(10))


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
    data = load_image_folder(tmp_path, (28, 28))
    assert data.labels == ["dark", "light"]
    assert data.input_shape == (28, 28, 1)
    assert len(data.train.y) + len(data.val.y) + len(data.test.y) == 20


def test_image_folder_without_classes_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="one subfolder per class"):
        load_image_folder(tmp_path, (28, 28))


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
    assert load_image_folder(tmp_path, (28, 28)).labels == ["a", "b"]
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) c hold no images"):
        load_image_folder(tmp_path, (28, 28))
    with pytest.raises(DataError, match="no such directory"):
        load_image_folder(tmp_path / "nope", (28, 28))
