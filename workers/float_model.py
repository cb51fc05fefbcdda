"""The float path: a bundle's ``saved_model/`` (float32, the model before quantisation) run by TensorFlow, for
workers on a GPU (``vigil work --runtime savedmodel``). TensorFlow places it on a GPU when it sees one and on the
CPU otherwise. Imported only when that runtime is chosen: a worker on the INT8 path never imports TensorFlow.

The SavedModel takes raw pixel values as float32 (the model rescales inside, as the INT8 one does through its
input quantisation), so frames need only a cast. Its serving signature has a free batch dimension: any batch runs
as one call, with no retracing per size.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from typing import Any

import numpy as np

from common.bundle import Bundle
from common.errors import BundleError, ConfigError
from common.inference import softmax

log = logging.getLogger(__name__)


INSTALL_HINT = "run scripts/bootstrap.sh full, or pip install 'vigil[train]' (tensorflow[and-cuda] on a GPU)"
IMPORT_TIMEOUT_S = 600.0


def check_available(bundle: Bundle, try_import: bool = True) -> None:
    """Raise, naming what to do, when this path cannot run here: before any worker process is spawned.

    ``try_import``: also import TensorFlow once, in a child process (a few seconds; the supervisor itself stays
    free of it). A package that is found but does not import (a missing CUDA library, a numpy it was not built
    for) would otherwise pass, and every worker would die on the import and be respawned for ever."""
    if not (bundle.saved_model_path / "saved_model.pb").is_file():
        raise BundleError(f"bundle {bundle.root} has no saved_model/ (it was exported without the float model); "
                          "use --runtime litert, or re-export it with `vigil model bundle`.")
    if importlib.util.find_spec("tensorflow") is None:
        raise ConfigError(f"--runtime savedmodel needs TensorFlow, which this environment lacks: {INSTALL_HINT}.")
    if not try_import:
        return
    log.info("checking that TensorFlow imports (a few seconds)")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        out = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True,
                             timeout=IMPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(f"--runtime savedmodel needs TensorFlow, and importing it took over {IMPORT_TIMEOUT_S:.0f} "
                          "s here; check the install (python -c 'import tensorflow').") from exc
    if out.returncode != 0:
        last = next((line for line in reversed(out.stderr.splitlines()) if line.strip()), f"exit {out.returncode}")
        raise ConfigError(f"--runtime savedmodel needs TensorFlow, which is installed but does not import here "
                          f"({last.strip()[:300]}): {INSTALL_HINT}.")


class SavedModelClassifier:
    """The same calls as ``common.inference.Classifier``: uint8 batches (N, H, W, C) in, probabilities out."""

    def __init__(self, bundle: Bundle, num_threads: int = 1) -> None:
        check_available(bundle, try_import=False)  # it is imported next; the supervisor checked it did
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):  # several workers can share one GPU
            tf.config.experimental.set_memory_growth(gpu, True)
        try:
            tf.config.threading.set_intra_op_parallelism_threads(num_threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow fixes its thread pools once it has run anything: this process keeps them
            log.debug("TensorFlow is initialised already: its thread pools stay as they are")
        self._tf = tf
        loaded = tf.saved_model.load(str(bundle.saved_model_path))
        self._fn: Any = loaded.signatures.get("serving_default")
        if self._fn is None:
            raise BundleError(f"bundle {bundle.root}: saved_model/ has no serving_default signature. Re-export it.")
        _args, kwargs = self._fn.structured_input_signature
        if len(kwargs) != 1 or len(self._fn.structured_outputs) != 1:
            raise BundleError(f"bundle {bundle.root}: saved_model/ must take one input and give one output, not "
                              f"{sorted(kwargs)} -> {sorted(self._fn.structured_outputs)}.")
        [(self._input, spec)] = kwargs.items()
        [self._output] = self._fn.structured_outputs
        self.input_shape: tuple[int, ...] = bundle.spec.input.shape
        if tuple(spec.shape[1:]) != self.input_shape:
            raise BundleError(f"bundle {bundle.root}: saved_model/ takes {tuple(spec.shape[1:])}, the spec says "
                              f"{self.input_shape}. Re-export it.")
        self.outputs_logits = bundle.spec.outputs == "logits"
        self.devices = [d.name for d in tf.config.list_logical_devices("GPU")] or ["CPU"]
        log.info("float SavedModel of %s on %s", bundle.version, ", ".join(self.devices))

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(f"expected a batch of shape (N, {self.input_shape}), got {batch.shape}")
        out = self._fn(**{self._input: self._tf.constant(batch.astype(np.float32))})[self._output].numpy()
        return softmax(out) if self.outputs_logits else np.asarray(out, np.float32)

    def predict_bucketed(self, batch: np.ndarray, max_bucket: int = 1024) -> np.ndarray:
        """``predict_proba`` in chunks of at most ``max_bucket`` (one call each: the batch dimension is free)."""
        parts = [self.predict_proba(batch[i:i + max_bucket]) for i in range(0, len(batch), max_bucket)]
        return np.concatenate(parts) if len(parts) != 1 else parts[0]
