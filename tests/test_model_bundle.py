from pathlib import Path

import numpy as np
import pytest

from common.bundle import TFLITE_FILE, Bundle
from common.errors import BundleError
from common.inference import Classifier


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    from model.architectures import vgg_bn
    from model.bundle import export_bundle
    from model.quantize import to_int8_tflite

    model = vgg_bn((28, 28, 1), 10, stages=[[8], [16]])
    calib = np.random.default_rng(0).integers(0, 256, (32, 28, 28, 1), dtype=np.uint8)
    out = tmp_path_factory.mktemp("b") / "tiny"
    export_bundle(out, model, to_int8_tflite(model, calib, 32), [f"c{i}" for i in range(10)], name="tiny",
                  version="0.0.1", command="pytest", metrics={"accuracy": 0.1})
    return out


def test_bundle_round_trip(bundle_dir: Path) -> None:
    bundle = Bundle.load(bundle_dir)
    assert bundle.spec.version.startswith("0.0.1+") and len(bundle.spec.version.split("+")[1]) == 8
    assert bundle.spec.input.shape == (28, 28, 1) and bundle.spec.input.dtype == "uint8"
    assert bundle.spec.quantization is not None and bundle.spec.outputs == "logits"
    assert {"model.tflite", "labels.txt", "model.keras.h5", "saved_model"} <= set(bundle.spec.files)
    clf = Classifier.from_bundle(bundle)
    probs = clf.predict_proba(np.zeros((4, 28, 28, 1), np.uint8))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_bundle_float_model_reloads(bundle_dir: Path) -> None:
    import tf_keras as keras

    model = keras.models.load_model(str(bundle_dir / "model.keras.h5"), compile=False)
    assert model.output_shape == (None, 10)


def test_corrupt_bundle_raises_bundle_error(bundle_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    data = bytearray((broken / TFLITE_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / TFLITE_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt"):
        Bundle.load(broken)


def test_a_running_classifier_does_not_read_the_model_file_again(tmp_path: Path) -> None:
    """An interpreter per batch size is made when that size first comes; reading the file then failed a running
    worker whose bundle a deploy was replacing (and the pool stopped)."""
    import shutil

    from tests.conftest import TINY_BUNDLE

    bundle = Bundle.load(shutil.copytree(TINY_BUNDLE, tmp_path / "b"))
    clf = Classifier.from_bundle(bundle)
    frames = np.zeros((4, *clf.input_shape), np.uint8)
    first = clf.predict_proba(frames[:1])
    (bundle.root / TFLITE_FILE).unlink()
    np.testing.assert_allclose(clf.predict_proba(frames)[:1], first, atol=1e-6)  # a new batch size: 4


def test_bucketed_batches_match_one_frame_at_a_time(bundle_dir: Path) -> None:
    clf = Classifier.from_bundle(Bundle.load(bundle_dir))
    frames = np.random.default_rng(1).integers(0, 256, (23, 28, 28, 1), dtype=np.uint8)
    one_by_one = np.concatenate([clf.predict_proba(frames[i:i + 1]) for i in range(len(frames))])
    bucketed = clf.predict_bucketed(frames, max_bucket=8)  # 8 + 8 + 4 + 2 + 1
    np.testing.assert_allclose(bucketed, one_by_one, atol=1e-6)
    assert sorted(clf._by_batch) == [1, 2, 4, 8]


def test_a_label_with_a_comma_is_refused(tmp_path: Path) -> None:
    """A comma would split a result's topk field ("label:p,label:p") in the wrong place for every reader."""
    import shutil

    from tests.conftest import TINY_BUNDLE

    bundle = tmp_path / "bundle"
    shutil.copytree(TINY_BUNDLE, bundle)
    labels = (bundle / "labels.txt").read_text().splitlines()
    (bundle / "labels.txt").write_text("\n".join(["shirt, long sleeves", *labels[1:]]) + "\n")
    with pytest.raises(BundleError, match=r"label 'shirt, long sleeves' in labels\.txt contains a comma"):
        Bundle.load(bundle, verify_hashes=False)


def test_exporting_a_label_with_a_comma_is_refused_before_anything_is_replaced(tmp_path: Path) -> None:
    from model.bundle import export_bundle

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep").write_text("an earlier export")
    with pytest.raises(BundleError, match=r"label 'a,b' in labels\.txt contains a comma"):
        export_bundle(out, None, b"", ["a,b", "c"], name="x", version="1", command="test")
    assert (out / "keep").read_text() == "an earlier export"
