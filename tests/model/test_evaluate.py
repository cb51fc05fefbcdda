import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.bundle import Bundle
from common.cli import main
from common.images import read_image
from common.inference import Classifier
from common.preprocess import preprocess
from common.settings import DEFAULT_BUNDLE
from model.bundle_eval import parse_indices
from model.data import FASHION_DIRS
from model.evaluate import classification_metrics, predict
from tests.helpers import TINY_BUNDLE

SHIPPED = DEFAULT_BUNDLE  # Fashion-MNIST's classes

REQUIRED = {"accuracy", "precision", "recall", "f1", "size_bytes", "gzip_bytes", "latency_ms_b1", "throughput_b8"}
needs_bundle = pytest.mark.skipif(not (DEFAULT_BUNDLE / "spec.json").is_file(), reason="no shipped bundle")
needs_fashion = pytest.mark.skipif(not (DEFAULT_BUNDLE / "spec.json").is_file()
                                   or not any((d / "t10k-labels-idx1-ubyte.gz").is_file() for d in FASHION_DIRS),
                                   reason="no shipped bundle or no Fashion-MNIST test set")


def test_macro_metrics_on_a_known_confusion() -> None:
    m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2)
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["recall"] == pytest.approx((0.5 + 1) / 2)


@needs_bundle
def test_evaluate_cli_prints_json_without_importing_tensorflow() -> None:
    code = (
        "import sys, json\n"
        "from common.cli import main\n"
        "rc = main(['model', 'evaluate', '--json', '--limit', '300'])\n"
        "print(json.dumps({'rc': rc, 'tf': 'tensorflow' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    status = json.loads(out.strip().splitlines()[-1])
    assert status == {"rc": 0, "tf": False}
    metrics = json.loads(out[: out.rindex("{")])
    assert set(metrics) >= REQUIRED
    assert metrics["num_images"] == 300 and metrics["accuracy"] > 0.5


@pytest.mark.parametrize(("args", "bad"), [(["--limit", "0"], "--limit"), (["--limit", "-5"], "--limit"),
                                           (["--threads", "0"], "--threads")])
def test_evaluate_rejects_out_of_range_options(capsys, args, bad) -> None:
    assert main(["model", "evaluate", "--bundle", str(TINY_BUNDLE), *args]) == 2
    err = capsys.readouterr().err
    assert f"Invalid value for '{bad}'" in err and "x>=1" in err


@pytest.mark.parametrize(("name", "problem"), [("no/such/dir/c.png", "directory .* does not exist"),
                                               ("c.txt", "matplotlib cannot write '.txt' files")])
def test_confusion_path_is_checked_before_evaluating(tmp_path, capsys, name, problem) -> None:
    # A missing bundle would be exit 4: exit 2 shows the path was checked before anything was loaded.
    target = tmp_path / name
    assert main(["model", "evaluate", "--bundle", str(tmp_path / "no-bundle"), "--confusion", str(target)]) == 2
    assert re.search(f"--confusion {re.escape(str(target))}: {problem}", capsys.readouterr().err)


def test_missing_dataset_names_the_data_path_option(tmp_path, capsys) -> None:
    assert main(["model", "evaluate", "--bundle", str(SHIPPED), "--data-path", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert f"not found in {tmp_path}" in err and "pass --data-path DIR" in err


def test_a_bundle_of_other_classes_is_not_scored_on_fashion_mnist(capsys) -> None:
    """A folder-trained bundle is refused (exit 2, naming its classes), not scored on Fashion-MNIST, where it
    would get a traceback (3 classes) or a meaningless accuracy (10)."""
    assert main(["model", "evaluate", "--bundle", str(TINY_BUNDLE)]) == 2
    assert "classifies class0, class1" in capsys.readouterr().err


def test_evaluate_help_shows_examples(capsys) -> None:
    assert main(["model", "evaluate", "--help"]) == 0
    assert re.search(r"Examples:\n +vigil model evaluate\n", capsys.readouterr().out)


@pytest.fixture
def quick_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Latency and throughput are not what these tests check: skip their timed loops."""
    monkeypatch.setattr("model.evaluate.latency_ms", lambda *_a, **_k: 0.0)
    monkeypatch.setattr("model.evaluate.throughput", lambda *_a, **_k: 0.0)


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """Three of the tiny bundle's ten classes, four images each, of other sizes than its 28x28 gray input."""
    rng = np.random.default_rng(0)
    root = tmp_path / "labelled"
    for name in ("class0", "class5", "class7"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(root / name / f"{i}.png"), rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    return root


def evaluate_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["model", "evaluate", "--bundle", str(TINY_BUNDLE), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def offline_predictions(paths: list[Path]) -> np.ndarray:
    """What the bundle predicts for these images, each prepared as the producer prepares a frame."""
    bundle = Bundle.load(TINY_BUNDLE)
    x = np.stack([preprocess(read_image(p), bundle.spec.input) for p in paths])
    return predict(Classifier(bundle.tflite_path), x)


def test_a_class_folder_is_scored_with_the_bundles_own_preprocessing(capsys, quick_speed, class_folder,
                                                                     tmp_path) -> None:
    metrics = evaluate_json(capsys, "--data", str(class_folder), "--confusion", str(tmp_path / "cm.png"))
    assert cv2.imread(str(tmp_path / "cm.png")) is not None
    paths = sorted(class_folder.glob("*/*.png"))
    truth = np.array([int(p.parent.name.removeprefix("class")) for p in paths])
    expected = classification_metrics(truth, offline_predictions(paths), 10)
    assert metrics["num_images"] == 12 and metrics["data"] == str(class_folder)
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    assert metrics["accuracy"] == expected["accuracy"] and metrics["f1"] == expected["f1"]
    rows = {row["label"]: row for row in metrics["per_class"]}
    assert {name: rows[name]["support"] for name in ("class0", "class5", "class7")} == dict.fromkeys(
        ("class0", "class5", "class7"), 4)
    assert all(row["support"] == 0 for name, row in rows.items() if name not in ("class0", "class5", "class7"))


def test_a_list_of_files_scores_like_the_folder_it_names(capsys, quick_speed, class_folder) -> None:
    """Labels by the parent folder's name or after a TAB; relative paths start at the list's folder."""
    paths = sorted(class_folder.glob("*/*.png"))
    lines = [f"{p.relative_to(class_folder)}" if i % 2 else f"{p.relative_to(class_folder)}\t{p.parent.name}"
             for i, p in enumerate(paths)]
    listing = class_folder / "checked.txt"
    listing.write_text("# checked by hand\n" + "\n".join(lines) + "\n\n")
    from_list = evaluate_json(capsys, "--files", str(listing))
    from_folder = evaluate_json(capsys, "--data", str(class_folder))
    assert from_list["num_images"] == 12 and from_list["data"] == str(listing)
    assert from_list["confusion_matrix"] == from_folder["confusion_matrix"]


def test_indices_select_images_in_the_sets_order(capsys, quick_speed, class_folder, tmp_path) -> None:
    paths = sorted(class_folder.glob("*/*.png"))  # class by class, files in name order
    chosen = [0, 5, 9, 10, 11]
    truth = np.array([int(paths[i].parent.name.removeprefix("class")) for i in chosen])
    expected = classification_metrics(truth, offline_predictions([paths[i] for i in chosen]), 10)
    metrics = evaluate_json(capsys, "--data", str(class_folder), "--indices", "0,5,9-11,10")  # each once
    assert metrics["num_images"] == 5 and metrics["confusion_matrix"] == expected["confusion_matrix"]
    (tmp_path / "picked.txt").write_text("0 5  # two\n9-11\n")
    from_file = evaluate_json(capsys, "--data", str(class_folder), "--indices-file", str(tmp_path / "picked.txt"))
    assert from_file["confusion_matrix"] == expected["confusion_matrix"]


@needs_fashion
def test_indices_of_the_test_set_score_those_test_images(capsys, quick_speed) -> None:
    picked = evaluate_json(capsys, "--bundle", str(SHIPPED), "--indices", "0-199")
    first = evaluate_json(capsys, "--bundle", str(SHIPPED), "--limit", "200")
    assert picked["num_images"] == 200 and picked["confusion_matrix"] == first["confusion_matrix"]
    assert evaluate_json(capsys, "--bundle", str(SHIPPED), "--indices", "0,5,9-20")["num_images"] == 14


def test_a_folder_class_the_bundle_does_not_know_is_refused(capsys, class_folder) -> None:
    (class_folder / "forklift").mkdir()
    assert main(["model", "evaluate", "--bundle", str(TINY_BUNDLE), "--data", str(class_folder)]) == 2
    err = capsys.readouterr().err
    assert "class folder(s) not among the classes of bundle" in err and "forklift" in err and "class9" in err


@pytest.mark.parametrize(("args", "said"), [
    (["--indices", "3,x"], "'x' is not an index or a range"),
    (["--indices", "9-2"], "ends before it starts"),
    (["--indices", "0,12"], "index 12 is outside the"),
    (["--indices", "0-99999999999"], "index 99999999999 is outside the"),  # refused, not expanded first
    (["--indices", "1", "--indices-file", __file__], "pass one of them"),
])
def test_bad_indices_exit_2_naming_the_problem(capsys, class_folder, args, said) -> None:
    assert main(["model", "evaluate", "--bundle", str(TINY_BUNDLE), "--data", str(class_folder), *args]) == 2
    assert said in capsys.readouterr().err


def test_parse_indices_takes_ranges_lists_and_comments() -> None:
    assert parse_indices("0,5,9-12", "--indices") == [range(0, 1), range(5, 6), range(9, 13)]
    assert parse_indices("7\n3, 3\n# none here: 100\n", "--indices-file f") == [range(7, 8), range(3, 4), range(3, 4)]


def test_evaluate_on_a_folder_never_imports_tensorflow(class_folder) -> None:
    code = (
        "import sys, json\n"
        "from common.cli import main\n"
        f"rc = main(['model', 'evaluate', '--bundle', {str(TINY_BUNDLE)!r}, '--data', {str(class_folder)!r}])\n"
        "print(json.dumps({'rc': rc, 'tf': 'tensorflow' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"rc": 0, "tf": False}
    assert re.search(r"\n +class7 +4 ", out)  # the per-class table
