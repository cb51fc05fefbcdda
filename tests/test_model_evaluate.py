import json
import subprocess
import sys

import numpy as np
import pytest

from common.settings import DEFAULT_BUNDLE
from model.evaluate import classification_metrics

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
