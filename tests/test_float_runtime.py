"""The float path, ``vigil work --runtime savedmodel``: the shipped bundle's SavedModel through TensorFlow. This
machine has no GPU, so TensorFlow runs it on the CPU; on a GPU machine it would place it there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from common.bundle import Bundle
from common.inference import Classifier
from tests.conftest import TINY_BUNDLE
from workers.conveyor import build_conveyor, load_test_set
from workers.results import read_results

SHIPPED = Path(__file__).resolve().parent.parent / "bundles" / "fashion-mnist"
VIGIL = [sys.executable, "-m", "common.cli"]

pytest.importorskip("tensorflow", reason="the float path needs TensorFlow (scripts/bootstrap.sh full)")


def test_the_float_model_agrees_with_the_int8_one_on_real_images() -> None:
    from workers.float_model import SavedModelClassifier

    images, labels = load_test_set()
    x, y = images[:1000, :, :, None], labels[:1000]
    bundle = Bundle.load(SHIPPED)
    floats = SavedModelClassifier(bundle).predict_bucketed(x, max_bucket=256)
    int8 = Classifier.from_bundle(bundle).predict_bucketed(x)
    assert floats.shape == (1000, 10) and np.allclose(floats.sum(axis=1), 1.0, atol=1e-4)
    assert (floats.argmax(axis=1) == int8.argmax(axis=1)).mean() >= 0.97
    assert (floats.argmax(axis=1) == y).mean() >= bundle.spec.metrics["accuracy"] - 0.03


@pytest.mark.integration
def test_a_pool_on_the_float_path_answers_every_frame(pipeline_env: dict[str, str], client: redis.Redis,
                                                      namespace: str, tmp_path: Path) -> None:
    bundle = Bundle.load(SHIPPED)
    conveyor = build_conveyor(tmp_path / "conveyor.avi", bundle.spec.input, items=60, hold=1)
    env = {**pipeline_env, "VIGIL_BUNDLE": str(SHIPPED)}
    for args in (["produce", "file", str(conveyor.path), "--source", "belt", "--no-progress"],
                 ["work", "--runtime", "savedmodel", "-n", "1", "--burst"]):
        out = subprocess.run([*VIGIL, *args], env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, (args, out.stderr[-2000:])
    results = read_results(client, namespace, "belt")
    assert sorted(r.seq for r in results) == list(range(60))
    assert {r.model_version for r in results} == {f"{bundle.version}.float"}
    labels = {label: i for i, label in enumerate(bundle.labels)}
    correct = sum(labels[r.label] == conveyor.label_of_frame(r.seq) for r in results)
    assert correct / len(results) >= 0.8


def test_a_bundle_without_a_saved_model_is_refused_before_any_worker_starts() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    out = subprocess.run([*VIGIL, "work", "--runtime", "savedmodel", "--burst"], capture_output=True, text=True,
                         timeout=60, env={**env, "VIGIL_BUNDLE": str(TINY_BUNDLE)})
    assert out.returncode == 4, out.stderr[-2000:]
    assert "no saved_model/" in out.stderr and "--runtime litert" in out.stderr
