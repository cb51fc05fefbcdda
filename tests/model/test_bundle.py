import json
from pathlib import Path

import numpy as np
import pytest

from common.bundle import TFLITE_FILE, Bundle, InputSpec
from common.errors import BundleError
from common.inference import Classifier
from model.data import FASHION_SPEC
from tests.helpers import TINY_BUNDLE


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    from model.architectures import vgg_bn
    from model.bundle import export_bundle
    from model.quantize import to_int8_tflite

    model = vgg_bn((28, 28, 1), 10, stages=[[8], [16]])
    calib = np.random.default_rng(0).integers(0, 256, (32, 28, 28, 1), dtype=np.uint8)
    out = tmp_path_factory.mktemp("b") / "tiny"
    export_bundle(out, model, to_int8_tflite(model, calib, 32), [f"c{i}" for i in range(10)],
                  input_spec=FASHION_SPEC, name="tiny", version="0.0.1", command="pytest", metrics={"accuracy": 0.1})
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
    """An interpreter per batch size is made when that size first comes, from the model read at load: a running
    worker whose bundle a deploy is replacing (here: deleted) still classifies a new batch size, the same way."""
    import shutil


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
        export_bundle(out, None, b"", ["a,b", "c"], input_spec=FASHION_SPEC, name="x", version="1", command="test")
    assert (out / "keep").read_text() == "an earlier export"


def _model_and_int8(bundle_dir: Path):
    from model.pipeline import load_keras

    return load_keras(bundle_dir / "model.keras.h5"), (bundle_dir / TFLITE_FILE).read_bytes()


def _export(out: Path, model, int8: bytes) -> None:
    from model.bundle import export_bundle

    export_bundle(out, model, int8, [f"c{i}" for i in range(10)], input_spec=FASHION_SPEC, name="tiny",
                  version="0.0.2", command="pytest", saved_model=False)


def test_bundle_out_that_is_not_a_bundle_is_refused_and_kept(bundle_dir: Path, tmp_path: Path) -> None:
    """`--out` that is not a bundle (`--out ~`, a home directory) is refused and left as it is; a bundle, or a
    new path, is written (replaced)."""
    from common.errors import ConfigError

    model, int8 = _model_and_int8(bundle_dir)
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not a bundle"):
        _export(home, model, int8)
    assert (home / "thesis.tex").read_text() == "years of work"
    _export(tmp_path / "new", model, int8)  # a new path, then the same bundle again: replaced
    _export(tmp_path / "new", model, int8)
    assert Bundle.load(tmp_path / "new").spec.version.startswith("0.0.2+")


def test_an_interrupted_re_export_leaves_the_old_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    model, int8 = _model_and_int8(bundle_dir)
    out = tmp_path / "b"
    _export(out, model, int8)
    before = Bundle.load(out).spec.version

    class Interrupted:  # Ctrl-C while the Keras file is written
        def __getattr__(self, name):
            return getattr(model, name)

        def save(self, *args, **kwargs):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _export(out, Interrupted(), int8)
    assert Bundle.load(out).spec.version == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no partial directory left beside it


def test_labels_that_do_not_match_the_outputs_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    """A bundle with 3 labels for 10 outputs is refused, at load and at export: loaded, it would crash every
    worker (IndexError), respawned for ever."""
    import shutil

    from common.errors import ConfigError
    from model.pipeline import check_outputs

    copy = shutil.copytree(bundle_dir, tmp_path / "b")
    (copy / "labels.txt").write_text("a\nb\nc\n")  # labels and spec agree with each other, not with the model
    spec = json.loads((copy / "spec.json").read_text())
    (copy / "spec.json").write_text(json.dumps({**spec, "num_classes": 3}))
    with pytest.raises(BundleError, match=r"10 outputs but labels\.txt lists 3"):
        Classifier.from_bundle(Bundle.load(copy, verify_hashes=False))
    model, _ = _model_and_int8(bundle_dir)
    with pytest.raises(ConfigError, match="10 outputs but the data has 3 labels"):
        check_outputs(model, ["a", "b", "c"], "bundle")


def test_a_model_file_that_is_not_one_is_a_usage_error(tmp_path: Path) -> None:
    from common.errors import ConfigError
    from model.pipeline import load_keras

    (tmp_path / "notamodel.h5").write_text("hello")
    with pytest.raises(ConfigError, match="is not a Keras model file"):
        load_keras(tmp_path / "notamodel.h5")


def test_the_bundle_spec_is_the_one_given_and_must_fit_the_model(bundle_dir: Path, tmp_path: Path) -> None:
    """The spec the training data was prepared with goes into spec.json as it is; one whose shape is not the
    model's input is refused before anything is written."""
    from common.errors import ConfigError
    from model.bundle import export_bundle

    model, int8 = _model_and_int8(bundle_dir)
    assert Bundle.load(bundle_dir).spec.input == FASHION_SPEC
    rgb = InputSpec(height=28, width=28, channels=3, color="rgb", resize="center_crop")
    with pytest.raises(ConfigError, match=r"input spec says \(28, 28, 3\)"):
        export_bundle(tmp_path / "b", model, int8, [f"c{i}" for i in range(10)], input_spec=rgb, name="x",
                      version="1", command="test", saved_model=False)
    assert not (tmp_path / "b").exists()
