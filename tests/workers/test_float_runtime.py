"""The float path, ``vigil work --runtime savedmodel``: the shipped bundle's SavedModel through TensorFlow. This
machine has no GPU, so TensorFlow runs it on the CPU; on a GPU machine it would place it there."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from common.bundle import Bundle
from common.embedded import EmbeddedBroker
from common.errors import ConfigError
from common.inference import Classifier
from tests.helpers import REPO, TINY_BUNDLE
from vigil_bench.conveyor import build_conveyor, load_test_set
from vigil_results.reader import read_results

SHIPPED = REPO / "bundles" / "fashion-mnist"
VIGIL = [sys.executable, "-m", "common.cli"]

# Only the tests that run the float model need TensorFlow: the refusal without it is tested everywhere.
needs_tensorflow = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                      reason="the float path needs TensorFlow (scripts/bootstrap.sh full)")


@needs_tensorflow
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


@pytest.mark.slow
@needs_tensorflow
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


# Two ways TensorFlow cannot be imported, for the whole process tree (spawned workers run site too): absent (what
# `import tensorflow` sees when it is not installed) and installed but broken (a missing CUDA or numpy ABI mismatch).
WITHOUT_TENSORFLOW = {
    "absent": ("sitecustomize.py", "import sys\nsys.modules['tensorflow'] = None\n"),
    "broken": ("tensorflow/__init__.py", "raise ImportError('libtensorflow_framework.so.2: cannot open shared "
                                         "object file (a broken TensorFlow install)')\n"),
}


def test_without_tensorflow_the_float_path_is_refused_with_what_to_install(monkeypatch) -> None:
    from workers.float_model import check_available

    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ConfigError, match=r"needs TensorFlow.*bootstrap\.sh full.*vigil\[train\]") as refused:
        check_available(Bundle.load(SHIPPED))
    assert refused.value.exit_code == 2


@pytest.mark.integration
@pytest.mark.parametrize("how", [
    "absent",
    "broken",  # found by importlib.util.find_spec, yet it does not import: only importing it tells
])
def test_work_without_tensorflow_refuses_before_any_worker_starts(embedded_broker: EmbeddedBroker, tmp_path: Path,
                                                                  how: str) -> None:
    name, text = WITHOUT_TENSORFLOW[how]
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])]),
               REDIS_URL=embedded_broker.url, VIGIL_BUNDLE=str(SHIPPED), VIGIL_NAMESPACE=f"vigiltest-{how}-tf")
    # A reachable broker and --burst: were the check passed, the pool would spawn a worker, which would fail on the
    # import, be respawned and end the run with exit 8 and the workers' tracebacks.
    out = subprocess.run([*VIGIL, "work", "--runtime", "savedmodel", "-n", "1", "--burst"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "--runtime savedmodel needs TensorFlow" in out.stderr and "pip install 'vigil[train]'" in out.stderr
    assert "Traceback" not in out.stderr and "worker 0" not in out.stderr
