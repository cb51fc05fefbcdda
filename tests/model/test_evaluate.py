import json
import re
import subprocess
import sys

import numpy as np
import pytest

from common.cli import main
from common.settings import DEFAULT_BUNDLE
from model.evaluate import classification_metrics
from tests.helpers import TINY_BUNDLE

SHIPPED = DEFAULT_BUNDLE  # Fashion-MNIST's classes

REQUIRED = {"accuracy", "precision", "recall", "f1", "size_bytes", "gzip_bytes", "latency_ms_b1", "throughput_b8"}
needs_bundle = pytest.mark.skipif(not (DEFAULT_BUNDLE / "spec.json").is_file(), reason="no shipped bundle")


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
